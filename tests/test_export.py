"""ONNX export: every zoo model and sampled genotypes of both spaces run in ONNX Runtime like in PyTorch (offline).

Sizes are cut for speed only where the graph keeps every op: DARTS nets with 3 cells (one normal and two reduction
cells hold every op of the genotype), ImageNet-size inputs at 64x64.
"""
import pytest
import timm
import torch
import yaml

import unas_zoo  # noqa: F401  (registers the zoo)
from unas_zoo import export
from unas_zoo.search.distributions import DartsCellDistribution, MBConvDistribution

ZOO = timm.list_models(module=['darts_cells', 'mbconv'])
DARTS = set(timm.list_models(module='darts_cells'))


def _small(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    extra = dict(layers=3, init_channels=8) if name in DARTS else {}
    return timm.create_model(name, **extra, **kwargs).eval()


def _size(model: torch.nn.Module) -> tuple[int, int, int]:
    c, h, w = model.pretrained_cfg['input_size']
    return c, min(h, 64), min(w, 64)


@pytest.mark.parametrize('name', ZOO)
def test_every_zoo_model_round_trips_through_onnx_runtime(name, tmp_path):
    model = _small(name)
    path = tmp_path / f'{name}.onnx'
    diff = export.export_onnx(model, path, _size(model))
    assert path.is_file() and diff <= export.ORT_TOLERANCE


@pytest.mark.parametrize('space', ['darts', 'mbconv'])
def test_sampled_genotypes_of_both_spaces_export(space, tmp_path):
    """Any genotype a search can produce: two random samples per space, with zero layers / unread inputs included."""
    dist = DartsCellDistribution() if space == 'darts' else MBConvDistribution()
    generator = torch.Generator().manual_seed(3)
    for i in range(2):
        genotype = dist.to_genotype({k: v for k, v in dist.sample(generator=generator).items()}, name=f's{i}')
        arch = 'darts_cell_cifar' if space == 'darts' else 'mbconv_net'
        model = _small(arch, genotype=genotype, num_classes=5)
        graph = export.onnx_bytes(model, _size(model))
        # The exported batch is 2; a batch of 3 and of 1 must run too (dynamic batch).
        assert export.ort_max_abs_diff(model, graph, _size(model), batch=3) <= export.ORT_TOLERANCE
        assert export.ort_max_abs_diff(model, graph, _size(model), batch=1) <= export.ORT_TOLERANCE


def test_cli_exports_a_genotype_file_and_a_checkpoint(tmp_path, capsys):
    genotype = tmp_path / 'cell.yaml'
    genotype.write_text(yaml.safe_dump(unas_zoo.genotypes.load('pc_darts').to_dict()))
    model = _small('darts_cell_cifar', genotype=str(genotype), num_classes=4)
    checkpoint = tmp_path / 'weights.pth'
    torch.save(model.state_dict(), checkpoint)
    out = tmp_path / 'cell.onnx'
    code = export.main(['darts_cell_cifar', '--genotype', str(genotype), '--checkpoint', str(checkpoint),
                        '--num-classes', '4', '--model-kwargs', 'layers=3', 'init_channels=8', '-o', str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert 'max abs diff' in printed and 'dynamic batch' in printed
    # The file holds the checkpoint's weights: ORT reproduces the model we saved.
    assert export.ort_max_abs_diff(model, out.read_bytes(), (3, 32, 32)) <= export.ORT_TOLERANCE


def test_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    out = tmp_path / 'x.onnx'
    assert export.main(['darts_cell_cifar', '--genotype', 'proxylessnas_gpu', '-o', str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "needs a 'darts' genotype" in err
    assert not out.exists()


def test_a_mismatch_beyond_tolerance_refuses_to_write(tmp_path, monkeypatch):
    monkeypatch.setattr(export, 'ort_max_abs_diff', lambda *args, **kwargs: 0.5)
    out = tmp_path / 'x.onnx'
    with pytest.raises(export.ExportError, match='differs from PyTorch by 0.5 .*not written'):
        export.export_onnx(_small('pc_darts_cifar'), out)
    assert not out.exists()


def test_features_only_models_are_refused_clearly(tmp_path):
    features = timm.create_model('mbconv_net', features_only=True)
    with pytest.raises(export.ExportError, match='features_only models are not exported'):
        export.export_onnx(features, tmp_path / 'f.onnx', (3, 64, 64))
