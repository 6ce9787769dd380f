"""Genotype schema: the one place that says what a searched architecture is.

Two search spaces share this module:

* ``darts`` -- a normal and a reduce cell, each a list of nodes; a node sums two branches ``(op, input)``.
  Inputs 0 and 1 are the cell inputs c_{k-2} and c_{k-1}; input ``2 + j`` is node ``j``.
* ``mbconv`` -- the ProxylessNAS MobileNetV2-style backbone and one choice per searchable layer.

Every genotype is plain data: it loads from YAML with ``yaml.safe_load`` rules and without aliases or deep nesting
(``_io.safe_load_yaml``), validates with bounded sizes and messages that name the file, the location and the allowed
values, and writes back to YAML so that load -> save -> load round-trips.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Union

import yaml

from .._io import atomic_write_text, safe_load_yaml

__all__ = [
    'DARTS_OPS', 'CIFAR_SEARCH_OPS', 'IMAGENET_SEARCH_OPS', 'MBCONV_CHOICES', 'NODES_PER_CELL',
    'GenotypeError', 'Branch', 'Cell', 'DartsGenotype', 'MBConvBackbone', 'MBConvGenotype', 'Genotype',
    'from_dict', 'load', 'available', 'parse_mbconv_choice',
]

# Every op a DARTS-space cell may name (the union of what the zoo's cells use).
DARTS_OPS = (
    'skip_connect', 'sep_conv_3x3', 'sep_conv_5x5', 'sep_conv_7x7',
    'dil_conv_3x3', 'dil_conv_5x5', 'max_pool_3x3', 'avg_pool_3x3',
)
# The UNAS search space on CIFAR, in the paper's order (Appendix A.1); ImageNet search uses the first five.
CIFAR_SEARCH_OPS = (
    'skip_connect', 'sep_conv_3x3', 'max_pool_3x3', 'dil_conv_3x3', 'sep_conv_5x5', 'avg_pool_3x3', 'sep_conv_7x7',
)
IMAGENET_SEARCH_OPS = CIFAR_SEARCH_OPS[:5]
NODES_PER_CELL = 4
BRANCHES_PER_NODE = 2
# Per-layer choices of the ProxylessNAS space: 'zero' removes the layer, 'KxK_eE' is an MBConv block.
MBCONV_CHOICES = ('zero', '3x3_e3', '3x3_e6', '5x5_e3', '5x5_e6', '7x7_e3', '7x7_e6')
MBCONV_ACTS = ('relu6', 'relu', 'swish', 'hard_swish')
# Bounds of an mbconv backbone: far beyond any real network, small enough that a typo cannot ask for terabytes.
MAX_WIDTH = 8192
MAX_STAGES = 16
MAX_LAYERS = 128

_ZOO_DIR = 'unas_zoo.genotypes'


class GenotypeError(ValueError):
    """A genotype file or dict is malformed; the message says where, what and what is allowed."""


def parse_mbconv_choice(choice: str) -> tuple[int, int]:
    """'5x5_e3' -> (kernel 5, expansion 3). 'zero' has no block and is refused."""
    kernel, expansion = choice.split('_e')
    return int(kernel.split('x')[0]), int(expansion)


# ----------------------------------------------------------------------------------------------------------- darts

@dataclass(frozen=True)
class Branch:
    """One input edge of a node: ``op`` applied to state ``input``."""
    op: str
    input: int


@dataclass(frozen=True)
class Cell:
    """A cell of ``NODES_PER_CELL`` nodes, each the sum of two branches; the output concatenates ``concat``."""
    nodes: tuple[tuple[Branch, Branch], ...]
    concat: tuple[int, ...] = (2, 3, 4, 5)

    @property
    def branches(self) -> list[tuple[int, Branch]]:
        """(node index, branch) pairs in node order."""
        return [(n, b) for n, node in enumerate(self.nodes) for b in node]


@dataclass(frozen=True)
class DartsGenotype:
    """A DARTS-space architecture: a normal and a reduce cell."""
    normal: Cell
    reduce: Cell
    name: str | None = None
    provenance: dict = field(default_factory=dict, compare=False)
    metrics: dict = field(default_factory=dict, compare=False)
    space: str = field(default='darts', init=False)

    def to_dict(self) -> dict[str, Any]:
        def cell(c: Cell) -> dict[str, Any]:
            return {'nodes': [[[b.op, b.input] for b in node] for node in c.nodes], 'concat': list(c.concat)}
        return _with_meta(self, {'normal': cell(self.normal), 'reduce': cell(self.reduce)})

    def to_yaml(self, path: str | os.PathLike) -> Path:
        return _write_yaml(self.to_dict(), path)


# ---------------------------------------------------------------------------------------------------------- mbconv

@dataclass(frozen=True)
class MBConvBackbone:
    """Fixed part of the ProxylessNAS-GPU space; each stage's first layer changes width (and may stride)."""
    stem_width: int = 40
    first_block_width: int = 24
    stage_widths: tuple[int, ...] = (32, 56, 112, 128, 256, 432)
    stage_depths: tuple[int, ...] = (4, 4, 4, 4, 4, 1)
    stage_strides: tuple[int, ...] = (2, 2, 2, 1, 2, 1)
    head_width: int = 1728
    act: str = 'relu6'
    bn_eps: float = 1e-3

    @property
    def num_layers(self) -> int:
        return sum(self.stage_depths)

    @property
    def fixed_layers(self) -> tuple[int, ...]:
        """0-based indices of the layers that change width or stride and so cannot be 'zero'."""
        starts, i = [], 0
        for depth in self.stage_depths:
            starts.append(i)
            i += depth
        return tuple(starts)

    def stage_of(self, layer: int) -> int:
        i = 0
        for s, depth in enumerate(self.stage_depths):
            if layer < i + depth:
                return s
            i += depth
        raise IndexError(layer)


@dataclass(frozen=True)
class MBConvGenotype:
    """A ProxylessNAS-space architecture: one choice from ``MBCONV_CHOICES`` per searchable layer."""
    layers: tuple[str, ...]
    backbone: MBConvBackbone = MBConvBackbone()
    name: str | None = None
    provenance: dict = field(default_factory=dict, compare=False)
    metrics: dict = field(default_factory=dict, compare=False)
    space: str = field(default='mbconv', init=False)

    def to_dict(self) -> dict[str, Any]:
        backbone = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self.backbone).items()}
        return _with_meta(self, {'backbone': backbone, 'layers': list(self.layers)})

    def to_yaml(self, path: str | os.PathLike) -> Path:
        return _write_yaml(self.to_dict(), path)


Genotype = Union[DartsGenotype, MBConvGenotype]


def _with_meta(genotype: Genotype, body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {'space': genotype.space}
    if genotype.name:
        out['name'] = genotype.name
    out.update(body)
    if genotype.provenance:
        out['provenance'] = genotype.provenance
    if genotype.metrics:
        out['metrics'] = genotype.metrics
    return out


def _write_yaml(data: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write atomically (temp file + rename) so that a crash never leaves half a genotype behind."""
    return atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, default_flow_style=None))


# ------------------------------------------------------------------------------------------------------ validation

class _Checker:
    """Validation helpers that prefix every message with the source and the location inside it."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, msg: str) -> GenotypeError:
        return GenotypeError(f'{self.source}: {where}: {msg}' if where else f'{self.source}: {msg}')

    def mapping(self, value: Any, where: str, required: set[str], optional: set[str] = frozenset()) -> dict:
        if not isinstance(value, dict):
            raise self.fail(where, f'expected a mapping with keys {sorted(required | optional)}, '
                                   f'got {type(value).__name__} {value!r}')
        missing = required - value.keys()
        if missing:
            raise self.fail(where, f'missing key(s) {sorted(missing)}; required keys are {sorted(required)}')
        unknown = value.keys() - required - optional
        if unknown:
            raise self.fail(where, f'unknown key(s) {sorted(map(str, unknown))}; '
                                   f'allowed keys are {sorted(required | optional)}')
        return value

    def sequence(self, value: Any, where: str, length: int | None = None) -> list:
        if not isinstance(value, list):
            raise self.fail(where, f'expected a list, got {type(value).__name__} {value!r}')
        if length is not None and len(value) != length:
            raise self.fail(where, f'expected {length} entries, got {len(value)}')
        return value

    def integer(self, value: Any, where: str, low: int | None = None, high: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f'expected an integer, got {type(value).__name__} {value!r}')
        if (low is not None and value < low) or (high is not None and value > high):
            raise self.fail(where, f'{value} is out of range; allowed {low}..{high}')
        return value

    def choice(self, value: Any, where: str, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            raise self.fail(where, f'unknown value {value!r}; allowed values are {list(allowed)}')
        return value


def _parse_cell(check: _Checker, data: Any, where: str) -> Cell:
    data = check.mapping(data, where, {'nodes'}, {'concat'})
    nodes_data = check.sequence(data['nodes'], f'{where}.nodes', NODES_PER_CELL)
    nodes = []
    for n, node in enumerate(nodes_data):
        node_where = f'{where} node {n}'
        node = check.sequence(node, node_where, BRANCHES_PER_NODE)
        branches = []
        for b, branch in enumerate(node):
            bw = f'{node_where} branch {b}'
            branch = check.sequence(branch, bw + ' (expected [op, input])', 2)
            op = check.choice(branch[0], bw + ' op', DARTS_OPS)
            # Node n may read the two cell inputs and the nodes before it: indices 0 .. n + 1.
            idx = check.integer(branch[1], bw + ' input', 0, n + 1)
            branches.append(Branch(op, idx))
        nodes.append(tuple(branches))
    concat = data.get('concat', [2, 3, 4, 5])
    concat = check.sequence(concat, f'{where}.concat')
    if not concat:
        raise check.fail(f'{where}.concat', 'must name at least one node')
    concat = tuple(check.integer(c, f'{where}.concat', 2, NODES_PER_CELL + 1) for c in concat)
    if len(set(concat)) != len(concat):
        raise check.fail(f'{where}.concat', f'{list(concat)} names a node twice; each node at most once')
    return Cell(tuple(nodes), concat)


def _parse_backbone(check: _Checker, data: Any) -> MBConvBackbone:
    defaults = dataclasses.asdict(MBConvBackbone())
    data = check.mapping(data if data is not None else {}, 'backbone', set(), set(defaults))
    values: dict[str, Any] = {}
    for key, default in defaults.items():
        if key not in data:
            values[key] = default
            continue
        value = data[key]
        where = f'backbone.{key}'
        if isinstance(default, tuple):
            value = check.sequence(value, where)
            if not 1 <= len(value) <= MAX_STAGES:
                raise check.fail(where, f'has {len(value)} entries; allowed 1..{MAX_STAGES} stages')
            high = MAX_WIDTH if key == 'stage_widths' else None
            value = tuple(check.integer(v, where, 1, high) for v in value)
        elif key == 'act':
            value = check.choice(value, where, MBCONV_ACTS)
        elif key == 'bn_eps':
            if isinstance(value, str):  # YAML 1.1 reads '1e-3' (no dot) as a string
                try:
                    value = float(value)
                except ValueError:
                    pass
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise check.fail(where, f'expected a float in (0, 1), got {value!r}')
            value = float(value)
        else:  # a width
            value = check.integer(value, where, 1, MAX_WIDTH)
        values[key] = value
    stages = len(values['stage_widths'])
    for key in ('stage_depths', 'stage_strides'):
        if len(values[key]) != stages:
            raise check.fail(f'backbone.{key}', f'has {len(values[key])} entries but stage_widths has {stages}')
    if sum(values['stage_depths']) > MAX_LAYERS:
        raise check.fail('backbone.stage_depths', f'{sum(values["stage_depths"])} layers in all; allowed at most '
                                                  f'{MAX_LAYERS}')
    for s in values['stage_strides']:
        check.choice(s, 'backbone.stage_strides', (1, 2))
    return MBConvBackbone(**values)


def _parse_meta(check: _Checker, data: dict) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if 'name' in data:
        if not isinstance(data['name'], str) or not data['name']:
            raise check.fail('name', f'expected a non-empty string, got {data["name"]!r}')
        meta['name'] = data['name']
    for key in ('provenance', 'metrics'):
        if key in data:
            meta[key] = check.mapping(data[key], key, set(), set(data[key]) if isinstance(data[key], dict) else set())
    return meta


def from_dict(data: Any, source: str = '<dict>') -> Genotype:
    """Validate a parsed YAML document and build its genotype; ``source`` prefixes every error message."""
    check = _Checker(source)
    if data is None:
        raise check.fail('', 'empty genotype (no YAML document)')
    if not isinstance(data, dict):
        raise check.fail('', f'expected a mapping at the top level, got {type(data).__name__}')
    if 'space' not in data:
        raise check.fail('', "missing key 'space'; allowed values are ['darts', 'mbconv']")
    space = check.choice(data['space'], 'space', ('darts', 'mbconv'))
    meta_keys = {'name', 'provenance', 'metrics'}
    if space == 'darts':
        check.mapping(data, '', {'space', 'normal', 'reduce'}, meta_keys)
        return DartsGenotype(
            normal=_parse_cell(check, data['normal'], 'normal'),
            reduce=_parse_cell(check, data['reduce'], 'reduce'),
            **_parse_meta(check, data))
    check.mapping(data, '', {'space', 'layers'}, meta_keys | {'backbone'})
    backbone = _parse_backbone(check, data.get('backbone'))
    layers = check.sequence(data['layers'], 'layers', backbone.num_layers)
    fixed = set(backbone.fixed_layers)
    for i, choice in enumerate(layers):
        check.choice(choice, f'layer {i + 1}', MBCONV_CHOICES)
        if choice == 'zero' and i in fixed:
            raise check.fail(
                f'layer {i + 1}', f"'zero' is not allowed where width or stride changes; "
                                  f'allowed values are {list(MBCONV_CHOICES[1:])}')
    return MBConvGenotype(layers=tuple(layers), backbone=backbone, **_parse_meta(check, data))


# ------------------------------------------------------------------------------------------------------ load / zoo

def available() -> list[str]:
    """Names of the genotypes shipped with the package."""
    return sorted(p.name[:-5] for p in resources.files(_ZOO_DIR).iterdir() if p.name.endswith('.yaml'))


def _yaml_error_line(error: yaml.YAMLError) -> str:
    """One line for a YAML error: where it is and what is wrong (PyYAML's own message spans several lines)."""
    mark = getattr(error, 'problem_mark', None)
    where = f' at line {mark.line + 1}, column {mark.column + 1}' if mark is not None else ''
    detail = ' '.join(filter(None, (getattr(error, 'context', None), getattr(error, 'problem', None)))) or str(error)
    refused_tag = isinstance(error, yaml.constructor.ConstructorError)
    hint = ' (tags that build Python objects are refused)' if refused_tag else ''
    if isinstance(error, yaml.composer.ComposerError) and 'alias' in detail:
        hint = ' (a genotype is plain data: write each value out)'
    return f"not valid YAML{where}: {' '.join(detail.split())}{hint}"


def load(name_or_path: str | os.PathLike | dict | Genotype) -> Genotype:
    """Load a zoo genotype by name, a YAML file by path, or a parsed dict (e.g. from a Hub ``config.json``).

    A genotype object is returned unchanged, so every API taking ``genotype=`` accepts all four forms.
    """
    if isinstance(name_or_path, (DartsGenotype, MBConvGenotype)):
        return name_or_path
    if isinstance(name_or_path, dict):
        return from_dict(name_or_path, '<genotype dict>')
    text_name = str(name_or_path)
    if text_name in available():
        source = resources.files(_ZOO_DIR) / f'{text_name}.yaml'
        text, label = source.read_text(), f'{text_name}.yaml (zoo)'
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise GenotypeError(f'{text_name}: no such genotype file and no zoo genotype of that name; '
                                f'zoo genotypes are {available()}')
        label = str(path)
        try:
            text = path.read_text(encoding='utf-8')
        except UnicodeDecodeError as e:
            raise GenotypeError(f'{label}: not a UTF-8 text file (byte {e.start}); a genotype is a YAML text file') \
                from None
    try:
        data = safe_load_yaml(text)
    except yaml.YAMLError as e:
        raise GenotypeError(f'{label}: {_yaml_error_line(e)}') from None
    genotype = from_dict(data, label)
    if genotype.name is None:
        genotype = dataclasses.replace(genotype, name=Path(text_name).stem)
    return genotype
