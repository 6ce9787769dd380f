"""Genotype zoo and schema: the shipped files match the published architectures, YAML round-trips, and every kind of
malformed file is refused with a message that says which file, where, what and what is allowed."""
import copy
import dataclasses
import re

import pytest
import yaml

from unas_zoo import genotypes
from unas_zoo.genotypes import (
    DARTS_OPS, MBCONV_CHOICES, Branch, DartsGenotype, GenotypeError, MBConvBackbone, MBConvGenotype,
    parse_mbconv_choice,
)

ZOO = (
    'unas_cifar10', 'unas_cifar100', 'unas_imagenet', 'darts_v1', 'darts_v2', 'pdarts', 'pc_darts',
    'unas_mbconv_gpu', 'proxylessnas_gpu',
)

# Verbatim from shared/reference/architectures.md: nodes separated by ' · ', each `(op, in) + (op, in)`.
REFERENCE_CELLS = {
    'unas_cifar10': (
        '(sep_conv_5x5,0)+(skip_connect,0) · (skip_connect,0)+(dil_conv_3x3,1) · '
        '(sep_conv_3x3,0)+(dil_conv_3x3,1) · (sep_conv_3x3,1)+(dil_conv_3x3,0)',
        '(sep_conv_3x3,0)+(sep_conv_5x5,0) · (skip_connect,1)+(sep_conv_3x3,0) · '
        '(avg_pool_3x3,1)+(skip_connect,0) · (sep_conv_5x5,3)+(avg_pool_3x3,1)',
    ),
    'unas_cifar100': (
        '(sep_conv_3x3,0)+(dil_conv_3x3,0) · (dil_conv_3x3,1)+(sep_conv_3x3,0) · '
        '(skip_connect,0)+(sep_conv_3x3,1) · (sep_conv_5x5,1)+(sep_conv_3x3,0)',
        '(sep_conv_7x7,0)+(sep_conv_3x3,0) · (sep_conv_3x3,1)+(sep_conv_5x5,0) · '
        '(sep_conv_7x7,1)+(dil_conv_3x3,0) · (dil_conv_3x3,0)+(sep_conv_3x3,3)',
    ),
    'unas_imagenet': (
        '(sep_conv_3x3,0)+(skip_connect,0) · (sep_conv_3x3,0)+(skip_connect,1) · '
        '(sep_conv_3x3,1)+(sep_conv_5x5,0) · (sep_conv_3x3,0)+(dil_conv_3x3,1)',
        '(sep_conv_5x5,0)+(sep_conv_3x3,1) · (sep_conv_5x5,0)+(sep_conv_3x3,1) · '
        '(sep_conv_5x5,1)+(dil_conv_3x3,0) · (dil_conv_3x3,3)+(sep_conv_3x3,1)',
    ),
    'darts_v1': (
        '(sep_conv_3x3,1)+(sep_conv_3x3,0) · (skip_connect,0)+(sep_conv_3x3,1) · '
        '(skip_connect,0)+(sep_conv_3x3,1) · (sep_conv_3x3,0)+(skip_connect,2)',
        '(max_pool_3x3,0)+(max_pool_3x3,1) · (skip_connect,2)+(max_pool_3x3,0) · '
        '(max_pool_3x3,0)+(skip_connect,2) · (skip_connect,2)+(avg_pool_3x3,0)',
    ),
    'darts_v2': (
        '(sep_conv_3x3,0)+(sep_conv_3x3,1) · (sep_conv_3x3,0)+(sep_conv_3x3,1) · '
        '(sep_conv_3x3,1)+(skip_connect,0) · (skip_connect,0)+(dil_conv_3x3,2)',
        '(max_pool_3x3,0)+(max_pool_3x3,1) · (skip_connect,2)+(max_pool_3x3,1) · '
        '(max_pool_3x3,0)+(skip_connect,2) · (skip_connect,2)+(max_pool_3x3,1)',
    ),
    'pdarts': (
        '(skip_connect,0)+(dil_conv_3x3,1) · (skip_connect,0)+(sep_conv_3x3,1) · '
        '(sep_conv_3x3,1)+(sep_conv_3x3,3) · (sep_conv_3x3,0)+(dil_conv_5x5,4)',
        '(avg_pool_3x3,0)+(sep_conv_5x5,1) · (sep_conv_3x3,0)+(dil_conv_5x5,2) · '
        '(max_pool_3x3,0)+(dil_conv_3x3,1) · (dil_conv_3x3,1)+(dil_conv_5x5,3)',
    ),
    'pc_darts': (
        '(sep_conv_3x3,1)+(skip_connect,0) · (sep_conv_3x3,0)+(dil_conv_3x3,1) · '
        '(sep_conv_5x5,0)+(sep_conv_3x3,1) · (avg_pool_3x3,0)+(dil_conv_3x3,1)',
        '(sep_conv_5x5,1)+(max_pool_3x3,0) · (sep_conv_5x5,1)+(sep_conv_5x5,2) · '
        '(sep_conv_3x3,0)+(sep_conv_3x3,3) · (sep_conv_3x3,1)+(sep_conv_3x3,2)',
    ),
}
REFERENCE_LAYERS = {
    'unas_mbconv_gpu': '5x5_e3, 3x3_e3, zero, zero | 7x7_e3, zero, zero, zero | 7x7_e3, 3x3_e3, 3x3_e3, 3x3_e3 | '
                       '5x5_e3, 3x3_e3, 3x3_e3, 3x3_e3 | 7x7_e6, 7x7_e3, 7x7_e3, 7x7_e3 | 7x7_e6',
    'proxylessnas_gpu': '5x5_e3, zero, zero, zero | 7x7_e3, zero, zero, 3x3_e3 | 7x7_e6, zero, zero, 5x5_e3 | '
                        '5x5_e6, zero, 3x3_e3, 5x5_e3 | 7x7_e6, 7x7_e6, 7x7_e6, 5x5_e6 | 7x7_e6',
}


def parse_reference_cell(text: str) -> tuple[tuple[Branch, Branch], ...]:
    nodes = []
    for node in text.split(' · '):
        pairs = re.findall(r'\((\w+),(\d+)\)', node)
        assert len(pairs) == 2, node
        nodes.append(tuple(Branch(op, int(idx)) for op, idx in pairs))
    return tuple(nodes)


# ----------------------------------------------------------------------------------------------------------- zoo

def test_available_lists_the_zoo():
    assert sorted(genotypes.available()) == sorted(ZOO)


@pytest.mark.parametrize('name', sorted(REFERENCE_CELLS))
def test_darts_zoo_matches_reference(name):
    normal_text, reduce_text = REFERENCE_CELLS[name]
    genotype = genotypes.load(name)
    assert isinstance(genotype, DartsGenotype)
    assert genotype.space == 'darts' and genotype.name == name
    assert genotype.normal.nodes == parse_reference_cell(normal_text)
    assert genotype.reduce.nodes == parse_reference_cell(reduce_text)
    assert genotype.normal.concat == genotype.reduce.concat == (2, 3, 4, 5)
    assert genotype.provenance, 'every zoo file says where it came from'


def test_darts_zoo_spot_checks():
    """A few entries spelled out by hand, independent of the reference-text parser above."""
    unas10 = genotypes.load('unas_cifar10')
    assert unas10.normal.nodes[0] == (Branch('sep_conv_5x5', 0), Branch('skip_connect', 0))
    assert unas10.reduce.nodes[3] == (Branch('sep_conv_5x5', 3), Branch('avg_pool_3x3', 1))
    unas100 = genotypes.load('unas_cifar100')
    assert unas100.reduce.nodes[0] == (Branch('sep_conv_7x7', 0), Branch('sep_conv_3x3', 0))
    pdarts = genotypes.load('pdarts')
    assert pdarts.normal.nodes[3] == (Branch('sep_conv_3x3', 0), Branch('dil_conv_5x5', 4))
    darts_v2 = genotypes.load('darts_v2')
    assert [b.op for _, b in darts_v2.reduce.branches].count('max_pool_3x3') == 5


@pytest.mark.parametrize('name', sorted(REFERENCE_LAYERS))
def test_mbconv_zoo_matches_reference(name):
    genotype = genotypes.load(name)
    assert isinstance(genotype, MBConvGenotype)
    assert genotype.space == 'mbconv' and genotype.name == name
    expected = tuple(c.strip() for c in REFERENCE_LAYERS[name].replace('|', ',').split(','))
    assert genotype.layers == expected
    backbone = genotype.backbone
    # The ProxylessNAS-GPU backbone of the reference file.
    assert backbone.stem_width == 40 and backbone.first_block_width == 24 and backbone.head_width == 1728
    assert backbone.stage_widths == (32, 56, 112, 128, 256, 432)
    assert backbone.stage_depths == (4, 4, 4, 4, 4, 1)
    assert backbone.stage_strides == (2, 2, 2, 1, 2, 1)
    assert backbone.act == 'relu6' and backbone.bn_eps == 1e-3
    assert backbone == MBConvBackbone()
    # Layers 1, 5, 9, 13, 17, 21 (1-based) change width and so are never 'zero'.
    assert backbone.fixed_layers == (0, 4, 8, 12, 16, 20)
    assert all(genotype.layers[i] != 'zero' for i in backbone.fixed_layers)


def test_mbconv_spot_checks():
    unas = genotypes.load('unas_mbconv_gpu')
    assert unas.layers[0] == '5x5_e3' and unas.layers[16] == '7x7_e6' and unas.layers[20] == '7x7_e6'
    assert unas.layers.count('zero') == 5
    proxyless = genotypes.load('proxylessnas_gpu')
    assert proxyless.layers[8] == '7x7_e6' and proxyless.layers.count('zero') == 8
    assert parse_mbconv_choice('7x7_e6') == (7, 6) and parse_mbconv_choice('3x3_e3') == (3, 3)


# ---------------------------------------------------------------------------------------------------- round trips

@pytest.mark.parametrize('name', ZOO)
def test_yaml_round_trip(name, tmp_path):
    genotype = genotypes.load(name)
    path = genotype.to_yaml(tmp_path / 'nested' / f'{name}.yaml')
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == [path.name], 'no temp file left behind'
    text = path.read_text()
    assert '!!python' not in text and '!!' not in text, 'plain YAML, loadable by safe_load'
    again = genotypes.load(path)
    assert again == genotype
    # provenance/metrics do not take part in ==; check they survive too.
    assert again.provenance == genotype.provenance and again.metrics == genotype.metrics
    assert again.name == genotype.name
    assert again.to_yaml(tmp_path / 'twice.yaml').read_text() == text


@pytest.mark.parametrize('name', ZOO)
def test_dict_round_trip(name):
    genotype = genotypes.load(name)
    data = genotype.to_dict()
    assert data['space'] == genotype.space
    assert genotypes.from_dict(data) == genotype
    assert genotypes.load(copy.deepcopy(data)) == genotype
    assert genotypes.load(genotype) is genotype


def test_equality_sees_a_single_changed_op():
    genotype = genotypes.load('unas_cifar10')
    nodes = list(genotype.normal.nodes)
    nodes[2] = (Branch('sep_conv_5x5', 0), nodes[2][1])
    changed = dataclasses.replace(genotype, normal=dataclasses.replace(genotype.normal, nodes=tuple(nodes)))
    assert changed != genotype
    assert genotypes.from_dict(changed.to_dict()) == changed


def test_file_without_name_takes_its_stem(tmp_path):
    data = genotypes.load('pdarts').to_dict()
    del data['name']
    path = tmp_path / 'my_cell.yaml'
    path.write_text(yaml.safe_dump(data))
    assert genotypes.load(path).name == 'my_cell'


# -------------------------------------------------------------------------------------------------- malformed files

DARTS = genotypes.load('darts_v2').to_dict()
MBCONV = genotypes.load('unas_mbconv_gpu').to_dict()
DARTS_ALLOWED = [repr(op) for op in DARTS_OPS]
NONZERO_CHOICES = [repr(c) for c in MBCONV_CHOICES[1:]]


def mutated(base: dict, edit) -> str:
    data = copy.deepcopy(base)
    edit(data)
    return yaml.safe_dump(data, sort_keys=False)


def set_at(*keys_and_value):
    *keys, value = keys_and_value

    def edit(data):
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value
    return edit


def delete(*keys):
    def edit(data):
        for key in keys[:-1]:
            data = data[key]
        del data[keys[-1]]
    return edit


# (case id, file text, fragments the message must contain: location, bad value, allowed values)
MALFORMED = [
    ('unknown_op', mutated(DARTS, set_at('normal', 'nodes', 1, 0, 0, 'conv_9x9')),
     ['normal node 1 branch 0 op', "'conv_9x9'", 'allowed values', *DARTS_ALLOWED]),
    ('op_is_a_number', mutated(DARTS, set_at('reduce', 'nodes', 0, 1, 0, 7)),
     ['reduce node 0 branch 1 op', '7', *DARTS_ALLOWED]),
    ('input_from_later_node', mutated(DARTS, set_at('normal', 'nodes', 0, 1, 1, 3)),
     ['normal node 0 branch 1 input', '3 is out of range', 'allowed 0..1']),
    ('input_from_itself', mutated(DARTS, set_at('reduce', 'nodes', 2, 0, 1, 4)),
     ['reduce node 2 branch 0 input', '4 is out of range', 'allowed 0..3']),
    ('input_negative', mutated(DARTS, set_at('reduce', 'nodes', 3, 1, 1, -1)),
     ['reduce node 3 branch 1 input', '-1 is out of range', 'allowed 0..4']),
    ('input_far_out_of_range', mutated(DARTS, set_at('normal', 'nodes', 3, 0, 1, 99)),
     ['normal node 3 branch 0 input', '99 is out of range', 'allowed 0..4']),
    ('input_is_a_string', mutated(DARTS, set_at('normal', 'nodes', 2, 0, 1, 'one')),
     ['normal node 2 branch 0 input', 'expected an integer', "str 'one'"]),
    ('input_is_a_float', mutated(DARTS, set_at('normal', 'nodes', 2, 1, 1, 1.5)),
     ['normal node 2 branch 1 input', 'expected an integer', 'float 1.5']),
    ('input_is_a_bool', mutated(DARTS, set_at('normal', 'nodes', 1, 1, 1, True)),
     ['normal node 1 branch 1 input', 'expected an integer', 'bool True']),
    ('three_nodes', mutated(DARTS, lambda d: d['normal']['nodes'].pop()),
     ['normal.nodes', 'expected 4 entries, got 3']),
    ('five_nodes', mutated(DARTS, lambda d: d['reduce']['nodes'].append([['skip_connect', 0], ['skip_connect', 1]])),
     ['reduce.nodes', 'expected 4 entries, got 5']),
    ('three_branches', mutated(DARTS, lambda d: d['normal']['nodes'][2].append(['skip_connect', 0])),
     ['normal node 2', 'expected 2 entries, got 3']),
    ('one_branch', mutated(DARTS, lambda d: d['reduce']['nodes'][1].pop()),
     ['reduce node 1', 'expected 2 entries, got 1']),
    ('branch_without_input', mutated(DARTS, set_at('normal', 'nodes', 0, 0, ['sep_conv_3x3'])),
     ['normal node 0 branch 0', 'expected [op, input]', 'expected 2 entries, got 1']),
    ('nodes_not_a_list', mutated(DARTS, set_at('normal', 'nodes', 'sep_conv_3x3')),
     ['normal.nodes', 'expected a list', "str 'sep_conv_3x3'"]),
    ('concat_out_of_range', mutated(DARTS, set_at('normal', 'concat', [2, 3, 6])),
     ['normal.concat', '6 is out of range', 'allowed 2..5']),
    ('concat_empty', mutated(DARTS, set_at('reduce', 'concat', [])),
     ['reduce.concat', 'at least one node']),
    ('concat_repeats_a_node', mutated(DARTS, set_at('normal', 'concat', [2, 3, 3, 3, 3, 4, 5])),
     ['normal.concat', 'names a node twice', 'each node at most once']),
    ('missing_reduce_cell', mutated(DARTS, delete('reduce')),
     ["missing key(s) ['reduce']", "required keys are ['normal', 'reduce', 'space']"]),
    ('missing_cell_nodes', mutated(DARTS, delete('normal', 'nodes')),
     ['normal', "missing key(s) ['nodes']", "required keys are ['nodes']"]),
    ('unknown_top_level_key', mutated(DARTS, set_at('extra_cell', {'nodes': []})),
     ["unknown key(s) ['extra_cell']", 'allowed keys are', "'normal'", "'reduce'", "'provenance'"]),
    ('unknown_cell_key', mutated(DARTS, set_at('normal', 'node_count', 4)),
     ['normal', "unknown key(s) ['node_count']", "allowed keys are ['concat', 'nodes']"]),
    ('cell_not_a_mapping', mutated(DARTS, set_at('normal', ['sep_conv_3x3', 0])),
     ['normal', 'expected a mapping', "list ['sep_conv_3x3', 0]"]),
    ('zero_where_width_changes', mutated(MBCONV, set_at('layers', 4, 'zero')),
     ['layer 5', "'zero' is not allowed where width or stride changes", 'allowed values', *NONZERO_CHOICES]),
    ('zero_in_last_layer', mutated(MBCONV, set_at('layers', 20, 'zero')),
     ['layer 21', "'zero' is not allowed", *NONZERO_CHOICES]),
    ('unknown_mbconv_choice', mutated(MBCONV, set_at('layers', 1, '9x9_e3')),
     ['layer 2', "'9x9_e3'", 'allowed values', *[repr(c) for c in MBCONV_CHOICES]]),
    ('twenty_layers', mutated(MBCONV, lambda d: d['layers'].pop()),
     ['layers', 'expected 21 entries, got 20']),
    ('layers_not_a_list', mutated(MBCONV, set_at('layers', '5x5_e3')),
     ['layers', 'expected a list', "str '5x5_e3'"]),
    ('missing_layers', mutated(MBCONV, delete('layers')),
     ["missing key(s) ['layers']", "required keys are ['layers', 'space']"]),
    ('backbone_width_is_a_string', mutated(MBCONV, set_at('backbone', 'stem_width', 'forty')),
     ['backbone.stem_width', 'expected an integer', "str 'forty'"]),
    ('backbone_width_zero', mutated(MBCONV, set_at('backbone', 'head_width', 0)),
     ['backbone.head_width', '0 is out of range']),
    ('backbone_head_width_huge', mutated(MBCONV, set_at('backbone', 'head_width', 100_000_000_000)),
     ['backbone.head_width', '100000000000 is out of range', 'allowed 1..8192']),
    ('backbone_stage_width_huge', mutated(MBCONV, set_at('backbone', 'stage_widths', [32, 56, 112, 128, 256, 10**6])),
     ['backbone.stage_widths', '1000000 is out of range', 'allowed 1..8192']),
    ('backbone_too_many_layers', mutated(MBCONV, set_at('backbone', 'stage_depths', [4, 4, 4, 4, 4, 10**6])),
     ['backbone.stage_depths', '1000020 layers in all', 'allowed at most 128']),
    ('backbone_too_many_stages', mutated(MBCONV, set_at('backbone', 'stage_widths', [32] * 17)),
     ['backbone.stage_widths', 'has 17 entries', 'allowed 1..16 stages']),
    ('backbone_stride_three', mutated(MBCONV, set_at('backbone', 'stage_strides', [2, 2, 2, 1, 3, 1])),
     ['backbone.stage_strides', 'unknown value 3', 'allowed values are [1, 2]']),
    ('backbone_stage_lists_disagree', mutated(MBCONV, set_at('backbone', 'stage_depths', [4, 4, 4, 4, 4])),
     ['backbone.stage_depths', 'has 5 entries but stage_widths has 6']),
    ('backbone_unknown_act', mutated(MBCONV, set_at('backbone', 'act', 'gelu')),
     ['backbone.act', "'gelu'", "'relu6'", "'hard_swish'"]),
    ('backbone_bn_eps_out_of_range', mutated(MBCONV, set_at('backbone', 'bn_eps', 2.0)),
     ['backbone.bn_eps', 'expected a float in (0, 1)', '2.0']),
    ('backbone_unknown_key', mutated(MBCONV, set_at('backbone', 'se_ratio', 0.25)),
     ['backbone', "unknown key(s) ['se_ratio']", "'stem_width'", "'head_width'"]),
    ('unknown_space', mutated(DARTS, set_at('space', 'nasnet')),
     ['space', "'nasnet'", "allowed values are ['darts', 'mbconv']"]),
    ('missing_space', mutated(DARTS, delete('space')),
     ['missing key', 'space', "allowed values are ['darts', 'mbconv']"]),
    ('name_not_a_string', mutated(DARTS, set_at('name', 42)),
     ['name', 'expected a non-empty string', '42']),
    ('provenance_not_a_mapping', mutated(DARTS, set_at('provenance', 'the paper')),
     ['provenance', 'expected a mapping', "'the paper'"]),
    ('top_level_list', '- space: darts\n- normal: {}\n',
     ['expected a mapping at the top level', 'got list']),
    ('empty_file', '', ['empty genotype']),
    ('only_a_comment', '# a genotype will go here\n', ['empty genotype']),
    ('yaml_syntax_error', 'space: darts\nnormal: {nodes: [[sep_conv_3x3, 0]\n',
     ['not valid YAML', 'line 3', "expected ',' or ']'"]),
    ('yaml_tab_indent', 'space: darts\n\tnormal: {}\n',
     ['not valid YAML', 'line 2, column 1', "'\\t'"]),
    ('two_yaml_documents', 'space: darts\n---\nspace: mbconv\n',
     ['not valid YAML', 'expected a single document']),
]


def test_enough_malformed_cases():
    assert len(MALFORMED) >= 15


@pytest.mark.parametrize('text,fragments', [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_file_is_refused_clearly(tmp_path, text, fragments):
    path = tmp_path / 'broken_genotype.yaml'
    path.write_text(text)
    with pytest.raises(GenotypeError) as info:
        genotypes.load(path)
    message = str(info.value)
    assert isinstance(info.value, ValueError) and not isinstance(info.value, (KeyError, IndexError))
    assert message.startswith(f'{path}: '), f'message names the file: {message}'
    assert '\n' not in message, 'one line'
    for fragment in fragments:
        assert fragment in message, f'{fragment!r} not in {message!r}'


@pytest.mark.parametrize('tag', ['!!python/object/apply:os.system', '!!python/object/new:os.system'])
def test_python_object_tag_is_refused_and_not_executed(tmp_path, tag):
    marker = tmp_path / 'executed'
    path = tmp_path / 'evil.yaml'
    path.write_text(f"space: {tag} ['touch {marker}']\nnormal: {{}}\n")
    with pytest.raises(GenotypeError) as info:
        genotypes.load(path)
    message = str(info.value)
    assert message.startswith(f'{path}: ') and 'not valid YAML' in message
    assert 'python/object' in message and 'refused' in message
    assert not marker.exists(), 'the YAML tag must not run anything'


def test_binary_file_is_refused(tmp_path):
    path = tmp_path / 'weights.yaml'
    path.write_bytes(b'\x89PNG\r\n\x1a\n\xff\xfe\x00')
    with pytest.raises(GenotypeError, match='not a UTF-8 text file') as info:
        genotypes.load(path)
    assert str(info.value).startswith(f'{path}: ')


def test_unknown_name_lists_the_zoo(tmp_path):
    with pytest.raises(GenotypeError) as info:
        genotypes.load('unas_cifar11')
    message = str(info.value)
    assert message.startswith('unas_cifar11: ') and 'no such genotype file' in message
    assert all(name in message for name in ZOO)
    with pytest.raises(GenotypeError, match='no such genotype file'):
        genotypes.load(tmp_path / 'missing.yaml')
    with pytest.raises(GenotypeError, match='no such genotype file'):
        genotypes.load(tmp_path)  # a folder is not a genotype file


def test_bad_dict_names_its_source():
    data = copy.deepcopy(DARTS)
    data['normal']['nodes'][0][0][0] = 'conv_9x9'
    with pytest.raises(GenotypeError, match=r"^<genotype dict>: normal node 0 branch 0 op: unknown value 'conv_9x9'"):
        genotypes.load(data)
    with pytest.raises(GenotypeError, match=r'^run42/config.json: normal node 0 branch 0 op'):
        genotypes.from_dict(data, 'run42/config.json')


def test_yaml_aliases_are_refused_quickly_and_in_little_memory(tmp_path):
    """A "billion laughs" file: 9 levels of 9 aliases would expand to 9**9 strings under yaml.safe_load."""
    import time
    import tracemalloc
    levels = 'abcdefghi'
    text = 'space: darts\nprovenance:\n  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n' + ''.join(
        f'  {c}: &{c} [{", ".join([f"*{p}"] * 9)}]\n' for p, c in zip(levels, levels[1:]))
    path = tmp_path / 'laughs.yaml'
    path.write_text(text)
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(GenotypeError) as info:
        genotypes.load(path)
    seconds, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 1.0 and peak < 5e6
    message = str(info.value)
    assert message.startswith(f'{path}: not valid YAML at line 4') and 'alias *a refused' in message
    assert '\n' not in message


def test_deep_nesting_is_refused_without_recursion_error(tmp_path):
    path = tmp_path / 'deep.yaml'
    path.write_text('space: darts\nprovenance: {x: ' + '[' * 20_000 + ']' * 20_000 + '}\n')
    with pytest.raises(GenotypeError, match=r'not valid YAML at line 2.*nested deeper than 64 levels'):
        genotypes.load(path)
