"""Hub export: the saved folder rebuilds the model bit for bit without the genotype YAML; push uses a mocked HfApi."""
import argparse
import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
import yaml

from unas_zoo import hub
from unas_zoo.genotypes import load as load_genotype
from unas_zoo.training import TrainingError, create_model, resolve_model_kwargs
from unas_zoo.validation import validate, validate_parser, write_results



@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A checkpoint in train.py's format (args + state_dict with the auxiliary head) of a searched-style genotype."""
    tmp_path = tmp_path_factory.mktemp('trained')
    data = load_genotype('pdarts').to_dict()
    data.update(name='my_search', provenance={'estimator': 'rebar', 'dataset': 'digits', 'final_entropy': 1.25})
    genotype_file = tmp_path / 'searched.yaml'
    genotype_file.write_text(yaml.safe_dump(data))
    model_kwargs = resolve_model_kwargs({'genotype': str(genotype_file), 'init_channels': 4, 'layers': 3})
    torch.manual_seed(0)
    model = create_model('darts_cell_cifar', num_classes=10, model_kwargs=model_kwargs, aux_logits=True)
    with torch.no_grad():  # non-trivial BN statistics, so that a lost buffer would show in the outputs
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    args = argparse.Namespace(model='darts_cell_cifar', model_kwargs=model_kwargs, num_classes=10, dataset='digits',
                              img_size=None, aux_weight=0.4)
    checkpoint = tmp_path / 'last.pth.tar'
    torch.save({'state_dict': model.state_dict(), 'args': args, 'epoch': 3, 'version': 2}, checkpoint)
    results = validate(validate_parser().parse_args(
        ['--checkpoint', str(checkpoint), '--dataset', 'digits', '--workers', '0', '--device', 'cpu']))
    results_file = write_results(results, tmp_path / 'results.json')
    genotype_file.unlink()  # from here on nothing may need the YAML
    return model.eval(), checkpoint, results_file, results


def test_saved_folder_rebuilds_the_model_bit_for_bit(tmp_path, trained):
    model, checkpoint, results_file, results = trained
    folder = hub.save(tmp_path / 'export', checkpoint=checkpoint, results_file=results_file)
    files = sorted(p.name for p in folder.iterdir())
    assert 'model.safetensors' in files and 'config.json' in files and 'README.md' in files
    assert not any(name.endswith(('.bin', '.pth')) for name in files)  # safetensors only
    assert {'genotype_normal.svg', 'genotype_reduce.svg', 'results.json'} <= set(files)

    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'darts_cell_cifar'
    assert config['model_args']['genotype']['name'] == 'my_search'
    assert config['model_args']['init_channels'] == 4 and 'aux_logits' not in config['model_args']
    assert config['pretrained_cfg']['mean'] == list(hub._data_settings('digits', model, None)['mean'])

    rebuilt = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))

    card = (folder / 'README.md').read_text()
    assert 'library_name: timm' in card and 'vahdat2020unas' in card
    front = yaml.safe_load(card.split('---\n')[1])  # the Hub's metadata block
    assert front['library_name'] == 'timm' and front['pipeline_tag'] == 'image-classification'
    assert {'image-classification', 'timm'} <= set(front['tags']) and 'transformers' not in front['tags']
    assert front['license'] == 'apache-2.0' and front['datasets'] == ['digits']
    details = card.split('## Model Details\n')[1].split('\n## ')[0]
    for stat in ('Params (M)', 'GMACs', 'Activations (M)', 'Image size: 32x32'):
        assert stat in details
    activations = float(details.split('Activations (M): ')[1].split()[0])
    assert 0 < activations < 100
    usage = card.split('## Model Usage\n')[1].split('\n## ')[0]
    assert usage.count('import unas_zoo') == 3 and usage.count("create_model('hf-hub:") == 3
    assert 'final_entropy: 1.25' in card and 'estimator: rebar' in card  # search provenance
    assert '![genotype_normal](genotype_normal.svg)' in card
    assert f'{results["top1"]:.2f}' in card and f'{results["params"] / 1e6:.3f}' in card
    assert 'Mobile setting (< 600M MACs):** yes' in card or 'Mobile setting (< 600M MACs): yes' in card


def test_save_refuses_an_existing_folder(tmp_path, trained):
    _, checkpoint, _, _ = trained
    target = tmp_path / 'export'
    target.mkdir()
    (target / 'keep.txt').write_text('mine')
    with pytest.raises(TrainingError, match='already exists'):
        hub.save(target, checkpoint=checkpoint)
    assert sorted(p.name for p in target.iterdir()) == ['keep.txt']


class FakeApi:
    """Records what push sends instead of talking to the Hub."""
    calls = []

    def __init__(self, token=None, **kwargs):
        FakeApi.calls.append(('init', token, kwargs))

    def create_repo(self, repo_id, private=False, exist_ok=False):
        FakeApi.calls.append(('create_repo', repo_id, private, exist_ok))
        return argparse.Namespace(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, revision=None, commit_message=''):
        FakeApi.uploaded = sorted(p.name for p in Path(folder_path).iterdir())
        FakeApi.config = json.loads((Path(folder_path) / 'config.json').read_text())
        FakeApi.readme = (Path(folder_path) / 'README.md').read_text()
        FakeApi.calls.append(('upload_folder', repo_id, commit_message))
        return argparse.Namespace(commit_url=f'https://huggingface.co/{repo_id}/commit/abc')


def test_push_uploads_the_folder_with_a_mocked_api(tmp_path, trained, monkeypatch, capsys):
    _, checkpoint, results_file, _ = trained
    FakeApi.calls = []
    monkeypatch.setattr(hub, 'HfApi', FakeApi)
    monkeypatch.setenv('HF_TOKEN', 'hf_do_not_print_me')
    code = hub.main(['push', '--checkpoint', str(checkpoint), '--results-file', str(results_file),
                     '--repo-id', 'my-org/unas-digits', '--private'])
    assert code == 0
    assert ('create_repo', 'my-org/unas-digits', True, True) in FakeApi.calls
    assert FakeApi.calls[0][1] is None  # huggingface_hub resolves HF_TOKEN / the login itself
    assert 'model.safetensors' in FakeApi.uploaded and 'README.md' in FakeApi.uploaded
    assert FakeApi.config['model_args']['genotype']['provenance']['estimator'] == 'rebar'
    assert "timm.create_model('hf-hub:my-org/unas-digits', pretrained=True)" in FakeApi.readme
    out = capsys.readouterr()
    assert 'hf_do_not_print_me' not in out.out + out.err
    assert "hf-hub:my-org/unas-digits" in out.out


def test_push_rejects_a_bad_repo_id(trained, monkeypatch):
    _, checkpoint, _, _ = trained
    monkeypatch.setattr(hub, 'HfApi', FakeApi)
    assert hub.main(['push', '--checkpoint', str(checkpoint), '--repo-id', 'no-org']) == 2


def test_zoo_model_exports_its_genotype(tmp_path):
    torch.manual_seed(0)
    model = create_model('unas_cifar10', num_classes=10, model_kwargs={'init_channels': 4, 'layers': 3})
    checkpoint = tmp_path / 'zoo.pth'
    torch.save(model.state_dict(), checkpoint)
    folder = hub.save(tmp_path / 'zoo', model='unas_cifar10', checkpoint=checkpoint,
                      model_kwargs={'init_channels': 4, 'layers': 3})
    config = json.loads((folder / 'config.json').read_text())
    assert config['unas_genotype']['name'] == 'unas_cifar10'
    shutil.rmtree(folder)


@pytest.mark.parametrize('arch,genotype,kwargs,size', [
    ('darts_cell_cifar', 'pdarts', {'init_channels': 4, 'layers': 3}, 32),
    ('mbconv_net', 'proxylessnas_gpu', {'num_classes': 7}, 64),
])
def test_timm_save_for_hf_rebuilds_without_the_yaml(tmp_path, arch, genotype, kwargs, size):
    """timm's own export (save_for_hf) of a model built from a genotype file: config.json holds the genotype itself,
    so the folder rebuilds the same outputs after the YAML is gone."""
    data = load_genotype(genotype).to_dict()
    data['name'] = 'my_cell'
    path = tmp_path / 'my_cell.yaml'
    path.write_text(yaml.safe_dump(data))
    torch.manual_seed(0)
    model = timm.create_model(arch, genotype=str(path), **kwargs).eval()
    out = tmp_path / 'hf'
    timm.models.save_for_hf(model, str(out), safe_serialization=True)
    path.unlink()
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == arch and config['model_args']['genotype']['name'] == 'my_cell'
    rebuilt = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    assert rebuilt.genotype == model.genotype
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
