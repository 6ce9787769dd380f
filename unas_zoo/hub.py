"""Publish a trained model to the Hugging Face Hub so that ``timm.create_model('hf-hub:ORG/NAME', pretrained=True)``
rebuilds it without any genotype YAML.

The folder is written by timm's ``save_for_hf`` (safetensors only); ``config.json`` carries the genotype in
``model_args`` (timm passes ``model_args`` to the entrypoint on load), and beside it go a model card in the layout of
timm's Hub cards (front matter, Model Details, usage, metrics from validate.py, search provenance, citation), the cell
diagrams and the results file. ``push`` uploads that folder with ``huggingface_hub.HfApi``, the same calls as timm's
``push_to_hf_hub``, which cannot add files of its own and writes its card only when the repository has none.

    python -m unas_zoo.hub save --checkpoint output/train/RUN/last.pth.tar --output hub/my_model
    python -m unas_zoo.hub push --checkpoint output/train/RUN/last.pth.tar --repo-id ORG/NAME

The token comes from ``HF_TOKEN`` or ``huggingface-cli login`` (huggingface_hub reads both); it is never printed.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import timm
import torch
import torch.nn as nn
import yaml
from huggingface_hub import HfApi
from huggingface_hub.errors import HTTPError, LocalTokenNotFoundError
from timm.models import save_for_hf

from .complexity import complexity, mobile_setting
from .genotypes import Genotype, load as load_genotype
from .training import TrainingError, _data_settings, _run_cli, create_model, load_weights, read_checkpoint_args
from .validation import read_results

__all__ = ['CITATION', 'build_model', 'model_card', 'save', 'push', 'main']

_logger = logging.getLogger(__name__)

CITATION = """@inproceedings{vahdat2020unas,
  title={{UNAS}: Differentiable Architecture Search Meets Reinforcement Learning},
  author={Vahdat, Arash and Mallya, Arun and Liu, Ming-Yu and Kautz, Jan},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2020}
}"""


def build_model(
        model: str | None = None,
        checkpoint: str | os.PathLike | None = None,
        model_kwargs: dict | None = None,
        num_classes: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The eval-mode model (no auxiliary head) with the checkpoint's weights, and the checkpoint's training args.

    Name, entrypoint arguments and classes default to those train.py stored in the checkpoint.
    """
    stored = read_checkpoint_args(checkpoint) if checkpoint else {}
    name = model or stored.get('model')
    if name is None:
        raise TrainingError('no model given: pass --model, or a --checkpoint written by train.py')
    same = model is None or model == stored.get('model')
    net = create_model(
        name, num_classes=num_classes or (stored.get('num_classes') if same else None),
        model_kwargs=model_kwargs if model_kwargs is not None else (stored.get('model_kwargs') if same else None))
    if checkpoint:
        load_weights(net, checkpoint)
    return net.eval(), stored


def _genotype_of(model: nn.Module) -> Genotype | None:
    """The genotype a model was built from: its ``genotype`` argument, else the attribute zoo models keep."""
    source = getattr(model, '_model_args', {}).get('genotype', getattr(model, 'genotype', None))
    return load_genotype(source) if source is not None else None


def _draw_cells(genotype: Genotype, folder: Path) -> list[Path]:
    """SVG diagrams of the cells; none (with a warning) when matplotlib is missing."""
    from .draw import DrawError, draw
    try:
        return draw(genotype, folder / 'genotype.svg')
    except DrawError as e:
        _logger.warning(f'model card without a cell diagram: {e}')
        return []


_SPACES = {'darts': 'DARTS-space cell network', 'mbconv': 'MBConv (ProxylessNAS-space) network'}
# Hub metadata as on timm's own cards, minus the 'transformers' tag: its timm wrapper cannot build an architecture
# that only exists after `import unas_zoo`.
_TAGS = ('image-classification', 'timm', 'unas_zoo')
_LICENSE = 'apache-2.0'


def _activations(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """Output elements of convs and linears for one image: the 'Activations' timm's cards report (fvcore's count)."""
    from fvcore.nn import ActivationCountAnalysis
    first = next(model.parameters())
    x = torch.zeros((1, *input_size), device=first.device, dtype=first.dtype)
    with torch.no_grad():
        analysis = ActivationCountAnalysis(model.eval(), x).unsupported_ops_warnings(False)
        return int(analysis.tracer_warnings('none').uncalled_modules_warnings(False).total())


def _front_matter(datasets: Sequence[str]) -> str:
    lines = ['---', 'tags:', *[f'- {t}' for t in _TAGS], 'library_name: timm', 'pipeline_tag: image-classification',
             f'license: {_LICENSE}']
    if datasets:
        lines += ['datasets:', *[f'- {d.lower()}' for d in datasets]]
    return '\n'.join(lines + ['---']) + '\n'


def _details(details: dict[str, Any]) -> str:
    text = '\n## Model Details\n'
    for key, value in details.items():
        if isinstance(value, dict):
            text += f'- **{key}:**\n' + ''.join(f'  - {k}: {v}\n' for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            text += f'- **{key}:**\n' + ''.join(f'  - {v}\n' for v in value)
        else:
            text += f'- **{key}:** {value}\n'
    return text


def _usage(model_id: str) -> str:
    """timm's card snippets (classification, feature maps, embeddings), each starting with ``import unas_zoo``."""
    load = "import timm, torch\nimport unas_zoo  # registers the architectures with timm\n\n"
    transform = ('data_config = timm.data.resolve_model_data_config(model)\n'
                 'transform = timm.data.create_transform(**data_config, is_training=False)\n')
    return (f'\n## Model Usage\n### Image Classification\n```python\n{load}'
            f"model = timm.create_model('{model_id}', pretrained=True).eval()\n{transform}"
            'with torch.no_grad():\n    probabilities = model(transform(img).unsqueeze(0)).softmax(dim=-1)\n```\n'
            f'\n### Feature Map Extraction\n```python\n{load}'
            f"model = timm.create_model('{model_id}', pretrained=True, features_only=True).eval()\n{transform}"
            'feature_maps = model(transform(img).unsqueeze(0))  # one tensor per resolution\n```\n'
            f'\n### Image Embeddings\n```python\n{load}'
            f"model = timm.create_model('{model_id}', pretrained=True, num_classes=0).eval()\n{transform}"
            'embedding = model(transform(img).unsqueeze(0))  # (1, num_features)\n```\n')


def model_card(
        name: str,
        architecture: str,
        counts: dict[str, Any],
        genotype: Genotype | None = None,
        results: dict[str, Any] | None = None,
        dataset: str | None = None,
        diagrams: Sequence[str] = (),
        repo_id: str | None = None,
) -> str:
    """README.md in timm's Hub card layout plus the architecture, the validation metrics and the search provenance.

    ``counts`` is :func:`unas_zoo.complexity` output; an ``activations`` entry adds the activation count.
    """
    stats = {
        'Params (M)': f'{counts["params"] / 1e6:.3f}',
        'GMACs': f'{counts["macs"] / 1e9:.3f}',
        'Activations (M)': f'{counts["activations"] / 1e6:.2f}' if 'activations' in counts else None,
        'Image size': 'x'.join(str(s) for s in counts['input_size'][1:]),
        'fvcore total (M)': f'{counts["fvcore_total"] / 1e6:.1f}',
        'Mobile setting (< 600M MACs)': 'yes' if mobile_setting(counts['macs']) else 'no',
    }
    details = {
        'Model Type': 'Image classification / feature backbone',
        'Model Stats': {k: v for k, v in stats.items() if v is not None},
        'Architecture': f'{architecture} ({genotype.space} genotype {genotype.name!r})' if genotype else architecture,
        'Papers': ['UNAS: Differentiable Architecture Search Meets Reinforcement Learning: '
                   'https://arxiv.org/abs/1912.07651'],
    }
    if dataset:
        details['Dataset'] = dataset
    text = _front_matter([dataset] if dataset else []) + f'# Model card for {name}\n'
    text += (f'\nA {_SPACES[genotype.space] if genotype else "timm model"} trained with the train.py of unas_zoo '
             '(UNAS, Vahdat et al., CVPR 2020). config.json carries the genotype, so loading needs no YAML file, only '
             '`pip install unas_zoo` and `import unas_zoo` (which registers the architectures with timm).\n')
    text += _details(details) + _usage(f"hf-hub:{repo_id or 'ORG/' + name}")
    if results and any(k in results for k in ('top1', 'top5', 'loss')):
        text += '\n## Metrics (validate.py)\n| dataset | split | images | top-1 (%) | top-5 (%) | loss |\n' \
                '|---|---|---|---|---|---|\n'
        cells = [results.get(k, '') for k in ('dataset', 'split', 'num_images')]
        cells += [f'{float(results[k]):.2f}' if results.get(k) not in (None, '') else '' for k in ('top1', 'top5')]
        cells.append(f'{float(results["loss"]):.4f}' if results.get('loss') not in (None, '') else '')
        text += '| ' + ' | '.join(str(c) for c in cells) + ' |\n'
    if genotype is not None:
        text += '\n## Architecture\n'
        text += ''.join(f'\n![{Path(d).stem}]({d})\n' for d in diagrams)
        text += f'\n```yaml\n{yaml.safe_dump(genotype.to_dict(), sort_keys=False)}```\n'
        text += '\n## Search provenance\n'
        text += f'\n```yaml\n{yaml.safe_dump(genotype.provenance, sort_keys=False)}```\n' if genotype.provenance \
            else '\nNone recorded in the genotype.\n'
    return text + f'\n## Citation\n```bibtex\n{CITATION}\n```\n'


def _write_folder(folder: Path, name: str, model: nn.Module, stored: dict[str, Any],
                  results_file: str | os.PathLike | None, repo_id: str | None) -> None:
    architecture = model.pretrained_cfg.get('architecture') or stored.get('model') or type(model).__name__
    dataset = stored.get('dataset')
    data = _data_settings(dataset.lower(), model, stored.get('img_size')) if dataset else None
    data_config = None if data is None else {
        'input_size': (3, data['image_size'], data['image_size']), 'mean': tuple(data['mean']),
        'std': tuple(data['std']), 'crop_pct': data['crop_pct'], 'interpolation': data['interpolation']}
    genotype = _genotype_of(model)
    model_config = {'unas_genotype': genotype.to_dict()} if genotype is not None else None
    save_for_hf(model, str(folder), model_config=model_config, safe_serialization=True, data_config=data_config)
    counts = complexity(model, data_config['input_size'] if data_config else None)
    counts['activations'] = _activations(model, counts['input_size'])
    results = read_results(results_file) if results_file else None
    if results_file:
        shutil.copyfile(results_file, folder / f'results{Path(results_file).suffix.lower()}')
    diagrams = [p.name for p in _draw_cells(genotype, folder)] if genotype is not None else []
    (folder / 'README.md').write_text(
        model_card(name, architecture, counts, genotype, results, dataset, diagrams, repo_id), encoding='utf-8')


def save(
        output: str | os.PathLike,
        *,
        model: str | None = None,
        checkpoint: str | os.PathLike | None = None,
        model_kwargs: dict | None = None,
        num_classes: int | None = None,
        results_file: str | os.PathLike | None = None,
        repo_id: str | None = None,
) -> Path:
    """Write the Hub folder to ``output`` (a new folder; written beside it first, then renamed into place)."""
    output = Path(output)
    if output.is_file() or (output.is_dir() and any(output.iterdir())):
        raise TrainingError(f'{output} already exists; choose a new --output folder')
    if results_file and not Path(results_file).is_file():
        raise TrainingError(f'--results-file {results_file}: no such file')
    net, stored = build_model(model, checkpoint, model_kwargs, num_classes)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{output.name}.', dir=output.parent))
    try:
        _write_folder(tmp, output.name, net, stored, results_file, repo_id)
        if output.is_dir():
            output.rmdir()  # empty (checked above)
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output


def push(
        repo_id: str,
        *,
        model: str | None = None,
        checkpoint: str | os.PathLike | None = None,
        model_kwargs: dict | None = None,
        num_classes: int | None = None,
        results_file: str | os.PathLike | None = None,
        private: bool = False,
        revision: str | None = None,
        commit_message: str = 'Add model',
        token: str | None = None,
) -> str:
    """Create ``repo_id`` (if needed) and upload the folder :func:`save` writes; returns the commit URL.

    ``token=None`` lets huggingface_hub take ``HF_TOKEN`` or the stored login.
    """
    if repo_id.count('/') != 1 or not all(repo_id.split('/')):
        raise TrainingError(f'--repo-id {repo_id!r}: expected ORG/NAME')
    with tempfile.TemporaryDirectory() as tmp:
        folder = save(Path(tmp) / repo_id.split('/')[1], model=model, checkpoint=checkpoint,
                      model_kwargs=model_kwargs, num_classes=num_classes, results_file=results_file, repo_id=repo_id)
        api = HfApi(token=token, library_name='timm', library_version=timm.__version__)
        try:
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
            commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                                       commit_message=commit_message)
        except (HTTPError, OSError, LocalTokenNotFoundError) as e:  # HTTP status, network, login; never the token
            raise TrainingError(f'push to {repo_id} failed ({type(e).__name__}: {" ".join(str(e).split())})') from e
    return str(getattr(commit, 'commit_url', commit))


def _parser() -> argparse.ArgumentParser:
    from timm.utils import ParseKwargs
    parser = argparse.ArgumentParser(prog='python -m unas_zoo.hub', description=__doc__.split('\n\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument('--checkpoint', default=None, help='train.py checkpoint (model and genotype read from it)')
    common.add_argument('--model', default=None, help='model name (default: the one stored in --checkpoint)')
    common.add_argument('--model-kwargs', nargs='*', default=None, action=ParseKwargs,
                        help='entrypoint arguments, e.g. genotype=genotype.yaml (default: from --checkpoint)')
    common.add_argument('--num-classes', type=int, default=None)
    common.add_argument('--results-file', default=None, help='validate.py --results-file output for the card')
    p = sub.add_parser('save', parents=[common], help='write the Hub folder locally (load it with local-dir:)')
    p.add_argument('--output', required=True, help='new folder to write')
    p = sub.add_parser('push', parents=[common], help='upload to the Hugging Face Hub')
    p.add_argument('--repo-id', required=True, help='ORG/NAME')
    p.add_argument('--private', action='store_true')
    p.add_argument('--revision', default=None)
    p.add_argument('--commit-message', default='Add model')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def run() -> int:
        args = _parser().parse_args(argv)
        source = dict(model=args.model, checkpoint=args.checkpoint, model_kwargs=args.model_kwargs,
                      num_classes=args.num_classes, results_file=args.results_file)
        if args.command == 'save':
            folder = save(args.output, **source)
            print(f"saved {folder}; load it with timm.create_model('local-dir:{folder}', pretrained=True)")
        else:
            url = push(args.repo_id, private=args.private, revision=args.revision,
                       commit_message=args.commit_message, **source)
            print(f"pushed {url}; load it with timm.create_model('hf-hub:{args.repo_id}', pretrained=True)")
        return 0
    return _run_cli(run)


if __name__ == '__main__':
    sys.exit(main())
