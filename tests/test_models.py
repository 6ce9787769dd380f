"""The zoo's timm models: timm's model contract (what timm's own tests/test_models.py checks) for every registered
unas_zoo model, plus the zoo-specific behaviour (auxiliary head, drop-path, genotype kwargs, weights).

Input sizes follow timm's test: the cfg size capped at a per-test target (128 for backward / TorchScript / fx,
96 for features), so ImageNet nets run small where timm's test runs them small.
"""
import datetime
import json
import math

import pytest
import torch
import timm
from safetensors.torch import save_file
from timm.layers import set_layer_config
from timm.models import FeatureInfo, get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor, get_graph_node_names

import unas_zoo
from unas_zoo.genotypes import GenotypeError, load
from unas_zoo.models import _builder, darts_cells, mbconv
from unas_zoo.models._builder import WeightsNotPublishedError, export_model_args

MODEL_NAMES = timm.list_models(module=['darts_cells', 'mbconv'])
DARTS_NAMES = timm.list_models(module='darts_cells')
MBCONV_NAMES = timm.list_models(module='mbconv')
REQUIRED = {
    'unas_cifar10', 'unas_cifar100', 'unas_imagenet', 'darts_v1_cifar', 'darts_v2_cifar', 'darts_v2_imagenet',
    'pdarts_cifar', 'pdarts_imagenet', 'pc_darts_cifar', 'unas_mbconv_gpu', 'proxylessnas_gpu',
    'darts_cell_cifar', 'darts_cell_imagenet', 'mbconv_net',
}
TARGET_BWD_SIZE = TARGET_JIT_SIZE = TARGET_FX_SIZE = 128
TARGET_FEAT_SIZE = 96
# TorchScript compile and fx tracing cost grows with depth: the full-depth nets of one model per family are scripted
# and traced; the other DARTS entrypoints run with 3 cells, which still holds every op of their genotype.
FULL_DEPTH = ('unas_cifar10', 'unas_imagenet')


def _jit_fx_kwargs(name: str) -> dict:
    return dict(layers=3) if name in DARTS_NAMES and name not in FULL_DEPTH else {}


def _input_size(name: str, target: int | None = None) -> tuple[int, ...]:
    """timm's rule: the cfg input size, each side capped at ``target``."""
    size = timm.get_pretrained_cfg_value(name, 'input_size')
    return tuple(min(s, target) for s in size) if target else tuple(size)


def _inputs(batch: int, size: tuple[int, ...]) -> torch.Tensor:
    return torch.randn((batch, *size), generator=torch.Generator().manual_seed(0))


def _fx_model(model: torch.nn.Module, train: bool = False) -> torch.nn.Module:
    """Trace as timm's test does: timm's leaf modules / autowrapped functions, last graph node as the output."""
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    train_return = [train_nodes[-1]]
    if train:
        graph_nodes = list(reversed(NodePathTracer(**tracer_kwargs).trace(model).nodes))
        output_names = [n.name for n in graph_nodes[0]._input_nodes.keys()]
        names = [n.name for n in graph_nodes]
        train_return = [train_nodes[-names.index(n)] for n in output_names]
    return create_feature_extractor(model, train_return_nodes=train_return, eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=tracer_kwargs)


@pytest.fixture
def fast_jit():
    """timm's test setting: the profiling executor without profiling compiles large models quickly."""
    old_executor = torch._C._jit_set_profiling_executor(True)
    old_mode = torch._C._jit_set_profiling_mode(False)
    yield
    torch._C._jit_set_profiling_executor(old_executor)
    torch._C._jit_set_profiling_mode(old_mode)


def test_registry_lists_every_required_model():
    assert set(MODEL_NAMES) == REQUIRED
    assert set(timm.list_models('unas*')) == {'unas_cifar10', 'unas_cifar100', 'unas_imagenet', 'unas_mbconv_gpu'}


# ------------------------------------------------------------------------------------------- timm's model contract

@pytest.mark.parametrize('name', MODEL_NAMES)
def test_forward_and_default_cfg(name):
    """timm's test_model_forward + test_model_default_cfgs at the cfg input size."""
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    assert model.num_classes == cfg['num_classes'] and model.num_features > 0 and model.head_hidden_size > 0
    assert model.in_chans == 3 and model.drop_rate == 0. and model.drop_path_rate == 0.
    assert len(cfg['mean']) == len(cfg['std']) == cfg['input_size'][0] == 3
    assert cfg.get('hf_hub_id') is None  # nothing published yet (see test_pretrained_listing_tells_the_truth)
    if '_cifar' in name:
        assert cfg['input_size'] == (3, 32, 32) and cfg['crop_pct'] == 1.0
        assert cfg['num_classes'] == (100 if name == 'unas_cifar100' else 10)
        assert cfg['mean'] == ((0.5071, 0.4865, 0.4409) if name == 'unas_cifar100' else (0.4914, 0.4822, 0.4465))
    else:
        assert cfg['input_size'] == (3, 224, 224) and cfg['mean'] == timm.data.IMAGENET_DEFAULT_MEAN
    state_dict = model.state_dict()
    assert cfg['first_conv'] + '.weight' in state_dict
    assert cfg['classifier'] + '.weight' in state_dict
    assert isinstance(model.get_submodule(cfg['first_conv']), torch.nn.Conv2d)
    assert model.get_classifier() is model.get_submodule(cfg['classifier'])

    x = _inputs(1, cfg['input_size'])
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (1, cfg['num_classes']) and not torch.isnan(logits).any()
        features = model.forward_features(x)
        assert tuple(features.shape[1:]) == (model.num_features, *cfg['pool_size'])
        pre_logits = model.forward_head(features, pre_logits=True)
        assert pre_logits.shape == (1, model.head_hidden_size)
        assert torch.allclose(model.forward_head(features), logits)

        model.set_grad_checkpointing()  # supported: must not change the output
        assert torch.allclose(model(x), logits, rtol=1e-4, atol=1e-5)
        model.set_grad_checkpointing(False)

        model.reset_classifier(0)
        assert model.num_classes == 0
        pooled = model(x)
        assert pooled.shape == pre_logits.shape == (1, model.head_hidden_size)
        model.reset_classifier(0, '')
        assert tuple(model(x).shape[1:]) == (model.num_features, *cfg['pool_size'])

        unpooled = timm.create_model(name, num_classes=0, global_pool='').eval()
        assert tuple(unpooled(x).shape[1:]) == (unpooled.num_features, *cfg['pool_size'])


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_backward_every_param_gets_gradient(name):
    """timm's test_model_backward: batch 2, 42 classes, train mode, every parameter receives a gradient."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=42).train()
    outputs = model(_inputs(2, _input_size(name, TARGET_BWD_SIZE)))
    assert isinstance(outputs, torch.Tensor) and outputs.shape == (2, 42)
    outputs.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f'no gradient for {missing}'
    assert not torch.isnan(outputs).any()


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_features_only(name):
    """timm's test_model_forward_features, plus out_indices selection and the intermediates of the plain model."""
    model = timm.create_model(name, features_only=True).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) >= 3
    size = _input_size(name, TARGET_FEAT_SIZE)
    with torch.no_grad():
        outputs = model(_inputs(1, size))
        assert len(outputs) == len(channels)
        for c, r, o in zip(channels, reductions, outputs):
            assert o.shape[1] == c and not torch.isnan(o).any()
            assert o.shape[2] <= math.ceil(size[1] / r) + 1 and o.shape[3] <= math.ceil(size[2] / r) + 1

        picked = timm.create_model(name, features_only=True, out_indices=(1, 2)).eval()
        assert picked.feature_info.channels() == channels[1:3]
        assert [o.shape[1] for o in picked(_inputs(1, size))] == channels[1:3]


@pytest.mark.parametrize('feature_cfg', [dict(feature_cls='fx'), dict(feature_cls='hook', no_rewrite=True)])
def test_two_input_cells_work_with_fx_and_hook_features(feature_cfg):
    getter = timm.create_model('unas_cifar10', layers=5, features_only=True).eval()
    model = timm.create_model('unas_cifar10', layers=5, features_only=True, feature_cfg=feature_cfg).eval()
    x = _inputs(1, (3, 32, 32))
    with torch.no_grad():
        assert [o.shape for o in model(x)] == [o.shape for o in getter(x)]
    assert model.feature_info.channels() == getter.feature_info.channels() == [144, 288, 576]


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_forward_intermediates(name):
    """timm's test_model_forward_intermediates: feature_info levels, final output == forward_features."""
    model = timm.create_model(name).eval()
    info = FeatureInfo(model.feature_info, len(model.feature_info))
    assert len(info.channels()) >= 3
    size = _input_size(name, TARGET_FEAT_SIZE)
    x = _inputs(1, size)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x, output_fmt='NCHW')
        assert len(intermediates) == len(info.channels())
        for c, r, o in zip(info.channels(), info.reduction(), intermediates):
            assert o.shape[1] == c and o.shape[2] <= math.ceil(size[1] / r) + 1
        assert torch.allclose(final, model.forward_features(x))
        model.set_grad_checkpointing()
        final_ckpt, _ = model.forward_intermediates(x)
        assert torch.allclose(final, final_ckpt, rtol=1e-4, atol=1e-5)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True, stop_early=True)
        assert [t.shape for t in last_two] == [t.shape for t in intermediates[-2:]]


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_torchscript(name, fast_jit):
    """timm's test_model_forward_torchscript, plus scripting the fx-traced graph (test_model_forward_fx_torchscript)."""
    with set_layer_config(scriptable=True):
        model = timm.create_model(name, **_jit_fx_kwargs(name)).eval()
    x = _inputs(1, _input_size(name, TARGET_JIT_SIZE))
    with torch.no_grad():
        expected = model(x)
        scripted = torch.jit.script(model)
        assert torch.allclose(scripted(x), expected, rtol=1e-4, atol=1e-5)
        fx_scripted = torch.jit.script(_fx_model(model))
        assert torch.allclose(tuple(fx_scripted(x).values())[0], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_fx_forward_and_backward(name):
    """timm's test_model_forward_fx (exactly equal outputs) and test_model_backward_fx."""
    model = timm.create_model(name, **_jit_fx_kwargs(name)).eval()
    x = _inputs(1, _input_size(name, TARGET_FX_SIZE))
    with torch.inference_mode():
        expected = model(x)
        traced = tuple(_fx_model(model)(x).values())[0]
    assert torch.equal(traced, expected)

    model = timm.create_model(name, num_classes=42, **_jit_fx_kwargs(name)).train()
    fx_train = _fx_model(model, train=True)
    outputs = torch.cat(tuple(fx_train(_inputs(2, _input_size(name, TARGET_FX_SIZE))).values()))
    outputs.mean().backward()
    assert outputs.shape[-1] == 42
    assert all(p.grad is not None for p in fx_train.parameters())


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_meta_device_build_and_reset_classifier(name):
    model = timm.create_model(name, device='meta')
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {'meta'}
    model.reset_classifier(7)
    assert model.num_classes == 7 and model.get_classifier().weight.device.type == 'meta'
    assert model.get_classifier().out_features == 7


@pytest.mark.parametrize('name', ['unas_cifar10', 'darts_cell_imagenet', 'proxylessnas_gpu'])
def test_dtype_and_reset_classifier_keeps_dtype(name):
    model = timm.create_model(name, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model.reset_classifier(5)
    assert model.get_classifier().weight.dtype == torch.bfloat16
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), torch.nn.Identity)


@pytest.mark.parametrize('name', ['pdarts_cifar', 'unas_imagenet', 'unas_mbconv_gpu'])
def test_in_chans(name):
    model = timm.create_model(name, in_chans=1, num_classes=3).eval()
    assert model.in_chans == 1
    with torch.no_grad():
        assert model(_inputs(2, (1, *_input_size(name, 64)[1:]))).shape == (2, 3)


@pytest.mark.parametrize('name', ['unas_cifar10', 'darts_cell_imagenet', 'mbconv_net'])
def test_unknown_kwarg_raises_type_error(name):
    with pytest.raises(TypeError, match='not_an_argument'):
        timm.create_model(name, not_an_argument=1)


@pytest.mark.parametrize('name', ['unas_imagenet', 'unas_mbconv_gpu'])
def test_group_matcher_and_no_weight_decay(name):
    model = timm.create_model(name)
    groups = timm.models.group_parameters(model, model.group_matcher())
    names = [n for n, _ in model.named_parameters()]
    assert sorted(n for g in groups.values() for n in g) == sorted(names)
    first_conv = model.pretrained_cfg['first_conv'] + '.weight'
    assert first_conv in groups[0]
    assert model.pretrained_cfg['classifier'] + '.weight' in groups[max(groups)]
    assert len(groups) > 5  # stem, one group per cell / block, head
    if hasattr(model, 'no_weight_decay'):
        assert set(model.no_weight_decay()) <= set(names)


# ---------------------------------------------------------------------------------------------- DARTS-space nets

def test_darts_layout_reductions_and_preprocessing():
    model = timm.create_model('unas_cifar10')
    assert len(model.cells) == 20
    assert [i for i, c in enumerate(model.cells) if c.reduction] == [6, 13]
    # c_{k-2} after a reduction cell is at twice the resolution: FactorizedReduce, else ReLU-conv1x1-BN
    for i, cell in enumerate(model.cells):
        after_reduction = i > 0 and model.cells[i - 1].reduction
        expected = unas_zoo.ops.FactorizedReduce if after_reduction else unas_zoo.ops.ReLUConvBN
        assert isinstance(cell.preprocess0, expected), i
    imagenet = timm.create_model('unas_imagenet')
    assert len(imagenet.cells) == 14 and [i for i, c in enumerate(imagenet.cells) if c.reduction] == [4, 9]
    assert isinstance(imagenet.cells[0].preprocess0, unas_zoo.ops.FactorizedReduce)  # stem0 is stride 4, stem1 8
    assert imagenet.stem0[0].out_channels == 23 and imagenet.cells[0].preprocess1[1].in_channels == 46


def test_bn_affine_and_pool_bn_flags():
    model = timm.create_model('darts_v2_cifar', layers=5, init_channels=8, bn_affine=False, pool_bn=True)
    cell_bns = [m for m in model.cells.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert cell_bns and not any(bn.affine for bn in cell_bns)
    assert model.stem[1].affine  # the stem keeps an affine BN, as in DARTS supernets
    pools = [m for m in model.cells.modules() if isinstance(m, torch.nn.Sequential)
             and isinstance(m[0], torch.nn.MaxPool2d)]
    assert pools and all(isinstance(p[1], torch.nn.BatchNorm2d) for p in pools)


def test_unread_cell_input_gets_no_preprocessing():
    genotype = load('unas_cifar10').to_dict()
    for node in genotype['normal']['nodes']:
        for branch in node:
            branch[1] = max(branch[1], 1)  # no branch reads c_{k-2}
    model = timm.create_model('darts_cell_cifar', genotype=genotype, layers=3, init_channels=8)
    assert isinstance(model.cells[0].preprocess0, torch.nn.Identity)
    model(_inputs(2, (3, 32, 32))).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_aux_head_only_on_request():
    plain = timm.create_model('unas_cifar10')
    assert plain.aux_head is None and not any('aux' in n for n, _ in plain.named_parameters())

    torch.manual_seed(0)
    model = timm.create_model('unas_cifar10', aux_logits=True, layers=8, init_channels=8, num_classes=7)
    x = _inputs(2, (3, 32, 32))
    logits, aux_logits = model.train()(x)
    assert logits.shape == aux_logits.shape == (2, 7)
    (logits.mean() + 0.4 * aux_logits.mean()).backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 7)
    model.reset_classifier(3)
    assert model.aux_head.fc.out_features == 3
    assert torch.jit.script(model.eval())(x).shape == (2, 3)  # the eval path scripts

    imagenet = timm.create_model('unas_imagenet', aux_logits=True, layers=5, init_channels=8).train()
    assert [t.shape for t in imagenet(_inputs(2, (3, 224, 224)))] == [(2, 1000), (2, 1000)]


def test_drop_path_skips_identities_and_is_read_at_forward_time():
    model = timm.create_model('unas_cifar10', layers=3, init_channels=8, drop_path_rate=0.3)
    assert model.drop_path_rate == 0.3
    normal_node0 = model.cells[0].nodes[0]  # (sep_conv_5x5, 0) + (skip_connect, 0) in a normal cell
    assert normal_node0.droppable == [True, False]
    reduce_node1 = model.cells[1].nodes[1]  # (skip_connect, 1) in a reduction cell is a FactorizedReduce
    assert reduce_node1.droppable == [True, True]

    x = _inputs(4, (3, 32, 32))
    model.train()
    torch.manual_seed(1)
    first = model(x)
    torch.manual_seed(2)
    assert not torch.allclose(first, model(x))  # branches were dropped at random
    model.drop_path_rate = 0.  # a training loop ramps the rate through the attribute
    torch.manual_seed(1)
    no_drop = model(x)
    torch.manual_seed(2)
    assert torch.allclose(no_drop, model(x))
    model.drop_path_rate = 0.3
    with torch.no_grad():
        model.eval()
        assert torch.allclose(model(x), model(x))  # no drop-path at eval


def test_generic_entrypoints_take_genotype_in_every_form(tmp_path):
    genotype = load('pdarts')
    path = genotype.to_yaml(tmp_path / 'cell.yaml')
    reference = timm.create_model('pdarts_cifar', layers=5, init_channels=8)
    shapes = {k: v.shape for k, v in reference.state_dict().items()}
    for form in ('pdarts', str(path), genotype.to_dict(), genotype):
        model = timm.create_model('darts_cell_cifar', genotype=form, layers=5, init_channels=8)
        assert model.genotype == genotype
        assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    assert timm.create_model('pdarts_cifar').genotype == genotype
    assert timm.create_model('darts_cell_imagenet', genotype=genotype, init_channels=16, layers=6).genotype == genotype


def test_genotype_errors_are_clear():
    with pytest.raises(GenotypeError, match="needs a 'darts' genotype"):
        timm.create_model('darts_cell_cifar', genotype='proxylessnas_gpu')
    with pytest.raises(GenotypeError, match="needs a 'mbconv' genotype"):
        timm.create_model('mbconv_net', genotype='unas_cifar10')
    with pytest.raises(GenotypeError, match='no such genotype file'):
        timm.create_model('darts_cell_cifar', genotype='no_such_cell.yaml')
    with pytest.raises(TypeError):  # the named models fix their genotype
        timm.create_model('unas_cifar10', genotype='pdarts')
    with pytest.raises(ValueError, match='layers must be >= 3'):
        timm.create_model('darts_cell_cifar', layers=2)


def test_export_model_args_rebuild_from_json():
    model = timm.create_model('darts_cell_cifar', genotype=load('pc_darts'), layers=4, init_channels=8)
    args = json.loads(json.dumps(export_model_args(model)))
    rebuilt = timm.create_model(model.pretrained_cfg['architecture'], **args)
    assert rebuilt.genotype == model.genotype
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    assert 'genotype' not in export_model_args(timm.create_model('unas_mbconv_gpu'))
    assert export_model_args(timm.create_model('mbconv_net', genotype='proxylessnas_gpu'))['genotype']['layers'][0] \
        == '5x5_e3'


def test_recorded_genotype_argument_is_the_genotype_itself(tmp_path):
    """What timm's save_for_hf writes (get_model_args) holds the genotype as a dict whatever form built the model,
    for the plain nets, their features_only wrappers, and nets built without create_model."""
    path = tmp_path / 'cell.yaml'
    load('pdarts').to_yaml(path)
    for genotype in (str(path), load('pdarts').to_dict(), load('pdarts'), 'pdarts'):
        for kwargs in ({}, {'features_only': True}):
            model = timm.create_model('darts_cell_cifar', genotype=genotype, layers=3, init_channels=4, **kwargs)
            assert timm.models.get_model_args(model)['genotype'] == load('pdarts').to_dict()
    mbconv_file = tmp_path / 'mb.yaml'
    load('proxylessnas_gpu').to_yaml(mbconv_file)
    for kwargs in ({}, {'features_only': True}):
        model = timm.create_model('mbconv_net', genotype=str(mbconv_file), **kwargs)
        assert isinstance(model, (mbconv.MBConvNet, mbconv.MBConvFeatures))
        assert timm.models.get_model_args(model)['genotype']['name'] == 'proxylessnas_gpu'
    direct = mbconv.build_mbconv(str(mbconv_file))
    assert timm.models.get_model_args(direct)['genotype'] == load('proxylessnas_gpu').to_dict()
    dated = load('pdarts').to_dict()
    dated['provenance'] = {'date': datetime.date(2026, 12, 2)}  # what yaml.safe_load makes of `date: 2026-12-02`
    model = timm.create_model('darts_cell_cifar', genotype=dated, layers=3, init_channels=4)
    assert json.loads(json.dumps(timm.models.get_model_args(model)))['genotype']['provenance'] == {'date': '2026-12-02'}


# ---------------------------------------------------------------------------------------------------- MBConv nets

def test_mbconv_arch_def_omits_zero_layers():
    assert mbconv.mbconv_arch_def('proxylessnas_gpu') == [
        ['ds_r1_k3_s1_e1_c24'],
        ['ir_r1_k5_s2_e3_c32'],
        ['ir_r1_k7_s2_e3_c56', 'ir_r1_k3_s1_e3_c56'],
        ['ir_r1_k7_s2_e6_c112', 'ir_r1_k5_s1_e3_c112'],
        ['ir_r1_k5_s1_e6_c128', 'ir_r1_k3_s1_e3_c128', 'ir_r1_k5_s1_e3_c128'],
        ['ir_r1_k7_s2_e6_c256', 'ir_r1_k7_s1_e6_c256', 'ir_r1_k7_s1_e6_c256', 'ir_r1_k5_s1_e6_c256'],
        ['ir_r1_k7_s1_e6_c432'],
    ]
    unas = load('unas_mbconv_gpu')
    blocks = sum(len(stage) for stage in mbconv.mbconv_arch_def(unas))
    assert blocks == 1 + sum(choice != 'zero' for choice in unas.layers)


def test_mbconv_is_a_timm_efficientnet_with_the_backbone():
    model = timm.create_model('unas_mbconv_gpu')
    assert isinstance(model, timm.models.EfficientNet)
    assert model.conv_stem.out_channels == 40 and model.conv_stem.stride == (2, 2)
    assert model.conv_head.in_channels == 432 and model.num_features == 1728 and model.classifier.bias is not None
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(bn.eps == 1e-3 for bn in bns)
    assert any(isinstance(m, torch.nn.ReLU6) for m in model.modules())
    assert not any('se' in type(m).__name__.lower() and 'excite' in type(m).__name__.lower()
                   for m in model.modules() if not isinstance(m, torch.nn.Identity))
    assert all(isinstance(b.se, torch.nn.Identity) for stage in model.blocks for b in stage)
    assert [len(stage) for stage in model.blocks] == [1, 2, 1, 4, 4, 4, 1]
    residual = [b.has_skip for stage in model.blocks for b in stage]
    assert residual == [False, False, True, False, False, True, True, True, False, True, True, True, False,
                        True, True, True, False]
    mbconv_build = mbconv.build_mbconv(load('proxylessnas_gpu'), num_classes=10)
    assert mbconv_build.genotype.name == 'proxylessnas_gpu' and mbconv_build.num_classes == 10


# -------------------------------------------------------------------------------------------------------- weights

def test_pretrained_listing_tells_the_truth():
    """timm lists a model as pretrained when its cfg names a weight source: only published weights may do so."""
    assert not set(MODEL_NAMES) & {m.split('.')[0] for m in timm.list_pretrained()}
    assert not any(timm.get_pretrained_cfg(name).has_weights for name in MODEL_NAMES)
    assert _builder.hub_id('unas_cifar10') == 'unas-zoo/unas_cifar10'


def test_pretrained_without_published_weights_fails_clearly(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError('the Hub must not be contacted')
    monkeypatch.setattr(timm.models._hub, 'hf_hub_download', no_network)
    for name in ('unas_cifar10', 'unas_mbconv_gpu', 'darts_cell_imagenet'):
        with pytest.raises(WeightsNotPublishedError, match=f'{name}: no pretrained weights are published yet'):
            timm.create_model(name, pretrained=True)


@pytest.mark.parametrize('name', ['darts_v2_cifar', 'proxylessnas_gpu'])
def test_pretrained_loads_local_safetensors(name, tmp_path):
    torch.manual_seed(0)
    source = timm.create_model(name).eval()
    file = tmp_path / 'model.safetensors'
    save_file(source.state_dict(), str(file))
    x = _inputs(1, _input_size(name, 64))
    overlay = dict(file=str(file))
    with torch.no_grad():
        loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay).eval()
        assert torch.equal(loaded(x), source(x))
        # a new head for another class count keeps the body's weights
        new_head = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=3).eval()
        assert torch.equal(new_head.forward_features(x), source.forward_features(x))
        assert new_head(x).shape == (1, 3)
        gray = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, in_chans=1).eval()
        first_conv = gray.pretrained_cfg['first_conv'] + '.weight'
        assert torch.allclose(gray.state_dict()[first_conv][:, 0], source.state_dict()[first_conv].sum(1))
        features = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, features_only=True)
        assert torch.equal(features.eval()(x)[-1], source.forward_intermediates(x)[1][-1])


@pytest.mark.parametrize('name', ['unas_imagenet', 'unas_mbconv_gpu'])
def test_published_weights_load_from_the_hub_id(name, tmp_path, monkeypatch):
    """timm's test_model_load_pretrained / test_model_features_pretrained once a name is published: weights come
    from hf-hub:unas-zoo/<name> (downloaded offline here) and adapt to in_chans=1, a new head, no head, features."""
    torch.manual_seed(0)
    source = timm.create_model(name).eval()
    file = tmp_path / 'model.safetensors'
    save_file(source.state_dict(), str(file))
    downloads = []

    def fake_hub_download(repo_id, filename, **kwargs):
        downloads.append((repo_id, filename))
        return str(file)
    monkeypatch.setattr(timm.models._hub, 'hf_hub_download', fake_hub_download)
    monkeypatch.setattr(_builder, 'PUBLISHED_WEIGHTS', frozenset({name}))
    # Publishing is one line in PUBLISHED_WEIGHTS, read when the cfgs are generated: hand the cfg over as generated.
    published = _builder._cfg(name)
    assert published['hf_hub_id'] == f'unas-zoo/{name}'
    overlay = dict(hf_hub_id=published['hf_hub_id'])

    first_conv = source.pretrained_cfg['first_conv'] + '.weight'
    x = _inputs(1, (1, *_input_size(name, 64)[1:]))
    with torch.no_grad():
        five = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, in_chans=1, num_classes=5)
        five.eval()
        assert torch.allclose(five.state_dict()[first_conv][:, 0], source.state_dict()[first_conv].sum(1))
        assert five(x).shape == (1, 5)
        headless = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, in_chans=1,
                                     num_classes=0).eval()
        assert torch.equal(headless(x), five.forward_head(five.forward_features(x), pre_logits=True))
        features = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, features_only=True)
        features.eval()
        rgb = _inputs(1, _input_size(name, 64))
        assert torch.equal(features(rgb)[-1], source.forward_intermediates(rgb)[1][-1])
    assert downloads == [(f'unas-zoo/{name}', 'model.safetensors')] * 3


def test_modules_export_their_model_classes():
    assert darts_cells.DartsCifarNet is type(timm.create_model('pc_darts_cifar'))
    assert darts_cells.DartsImageNetNet is type(timm.create_model('pdarts_imagenet'))
