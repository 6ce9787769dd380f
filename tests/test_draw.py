"""Drawing genotypes with matplotlib alone (no graphviz): layout geometry, what the files show, formats, the CLI."""
import os
import random
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib.figure
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.patches import Circle, FancyBboxPatch
from matplotlib.text import Text
from PIL import Image

from unas_zoo import genotypes
from unas_zoo.draw import CHOICE_COLORS, OP_COLORS, DrawError, cell_figure, cell_layout, draw, main, mbconv_figure

DARTS_ZOO = [n for n in genotypes.available() if genotypes.load(n).space == 'darts']
MBCONV_ZOO = [n for n in genotypes.available() if genotypes.load(n).space == 'mbconv']
STATES = ['c_{k-2}', 'c_{k-1}', '0', '1', '2', '3']


def random_cells(num: int, seed: int = 0) -> list[genotypes.Cell]:
    rng = random.Random(seed)
    cells = []
    for _ in range(num):
        nodes = tuple(tuple(genotypes.Branch(rng.choice(genotypes.DARTS_OPS), rng.randrange(n + 2)) for _ in range(2))
                      for n in range(4))
        concat = tuple(sorted(rng.sample(range(2, 6), rng.randint(1, 4))))
        cells.append(genotypes.Cell(nodes, concat))
    return cells


ALL_CELLS = [getattr(genotypes.load(n), kind) for n in DARTS_ZOO for kind in ('normal', 'reduce')] + random_cells(25)
CELL_IDS = [f'{n}-{kind}' for n in DARTS_ZOO for kind in ('normal', 'reduce')] + [f'random{i}' for i in range(25)]


def svg_texts(path: Path) -> list[str]:
    """Every text run of an SVG (one <text> per label line); parsing also checks it is well formed."""
    root = ET.parse(path).getroot()
    return [el.text for el in root.iter() if el.tag.endswith('text') and el.text]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'unas_zoo.draw', *args], capture_output=True, text=True,
                          env=env, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str):
    assert result.returncode == 1
    assert 'Traceback' not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], f'{fragment!r} not in {lines[0]!r}'


def test_zoo_has_both_spaces():
    assert len(DARTS_ZOO) >= 7 and len(MBCONV_ZOO) >= 2


# ------------------------------------------------------------------------------------------------- cell geometry

@pytest.mark.parametrize('cell', ALL_CELLS, ids=CELL_IDS)
def test_cell_layout_keeps_lines_and_labels_apart(cell):
    """Boxes never overlap; each line runs through no box but its own label and bends only between columns."""
    layout = cell_layout(cell)
    nodes = layout.nodes
    boxes = list(nodes.values()) + [b for b in layout.labels if b is not None]
    for i, a in enumerate(boxes):
        assert not any(a.overlaps(b) for b in boxes[i + 1:]), 'overlapping boxes'
        assert a.x - a.width / 2 >= -1e-6 and a.y - a.height / 2 >= -1e-6
        assert a.x + a.width / 2 <= layout.width + 1e-6 and a.y + a.height / 2 <= layout.height + 1e-6
    branches = [(STATES[b.input], str(n)) for n, b in cell.branches] + [(STATES[c], 'c_{k}') for c in cell.concat]
    assert len(layout.runs) == len(branches)
    for e, ((src, dst), runs, label) in enumerate(zip(branches, layout.runs, layout.labels)):
        assert (label is not None) == (e < len(cell.branches)), 'one label per branch, none on concat edges'
        (sx, _, sy), (_, ex, ey) = runs[0], runs[-1]
        assert sx == pytest.approx(nodes[src].x + nodes[src].width / 2, abs=nodes[src].width / 2 * 0.3)
        assert abs(sy - nodes[src].y) < nodes[src].height / 2
        assert ex == pytest.approx(nodes[dst].x - nodes[dst].width / 2, abs=nodes[dst].width / 2 * 0.3)
        assert abs(ey - nodes[dst].y) < nodes[dst].height / 2
        if label is not None:  # the label sits on the line
            assert any(x0 <= label.x - label.width / 2 and label.x + label.width / 2 <= x1 and y == label.y
                       for x0, x1, y in runs)
        own = {id(nodes[src]), id(nodes[dst]), id(label)}
        for x0, x1, y in runs:
            for box in boxes:
                crosses = x0 < box.x + box.width / 2 - 1e-6 and box.x - box.width / 2 + 1e-6 < x1
                assert id(box) in own or not (crosses and abs(y - box.y) < box.height / 2), 'line through a box'
        for (_, end, _), (start, _, _) in zip(runs, runs[1:]):  # the curve between runs crosses no box column
            assert not any(end + 1e-6 < b.x + b.width / 2 and b.x - b.width / 2 < start - 1e-6 for b in boxes)


def test_cell_layout_puts_every_node_right_of_its_inputs():
    for cell in ALL_CELLS:
        nodes = cell_layout(cell).nodes
        for n, branch in cell.branches:
            assert nodes[STATES[branch.input]].x < nodes[str(n)].x
        assert all(nodes['c_{k}'].x > box.x for state, box in nodes.items() if state != 'c_{k}')


def text_extents(fig) -> list[tuple[str, object]]:
    renderer = FigureCanvasAgg(fig).get_renderer()
    return [(t.get_text(), t.get_window_extent(renderer)) for t in fig.findobj(Text) if t.get_text()]


def assert_texts_readable(fig, free: set[str]):
    """Texts lie inside the figure, pairwise apart, and (except ``free`` ones) inside a box or circle."""
    texts = text_extents(fig)
    shapes = [p.get_window_extent() for p in fig.findobj(lambda a: isinstance(a, (FancyBboxPatch, Circle)))]
    for i, (text, extent) in enumerate(texts):
        assert fig.bbox.x0 <= extent.x0 and extent.x1 <= fig.bbox.x1, text
        assert fig.bbox.y0 <= extent.y0 and extent.y1 <= fig.bbox.y1, text
        for other, other_extent in texts[i + 1:]:
            assert not extent.overlaps(other_extent), f'{text!r} overlaps {other!r}'
        if text not in free:
            assert any(s.x0 <= extent.x0 and extent.x1 <= s.x1 and s.y0 <= extent.y0 and extent.y1 <= s.y1
                       for s in shapes), f'{text!r} sticks out of its box'


@pytest.mark.parametrize('name', DARTS_ZOO)
def test_cell_figure_texts_fit_and_never_overlap(name):
    for kind in ('normal', 'reduce'):
        assert_texts_readable(cell_figure(getattr(genotypes.load(name), kind), f'{name}: {kind}'), {f'{name}: {kind}'})


@pytest.mark.parametrize('name', MBCONV_ZOO)
def test_mbconv_figure_texts_fit_and_never_overlap(name):
    genotype = genotypes.load(name)
    stages = {f'{w} ch' + (f', /{s}' if s > 1 else '') for w, s in
              zip(genotype.backbone.stage_widths, genotype.backbone.stage_strides)}
    fig = mbconv_figure(genotype, 'title')
    assert_texts_readable(fig, {'title'} | stages)
    assert fig.get_figwidth() < 4 * fig.get_figheight(), 'the strip wraps into rows (legible on a model card)'


# --------------------------------------------------------------------------------------------- files and formats

@pytest.mark.parametrize('name', DARTS_ZOO)
def test_draw_darts_cells(name, tmp_path):
    genotype = genotypes.load(name)
    paths = draw(name, tmp_path / 'cell.svg')
    assert paths == [tmp_path / 'cell_normal.svg', tmp_path / 'cell_reduce.svg']
    assert sorted(p.name for p in tmp_path.iterdir()) == ['cell_normal.svg', 'cell_reduce.svg'], 'no temp files'
    for path, kind, cell in zip(paths, ('normal', 'reduce'), (genotype.normal, genotype.reduce)):
        texts = svg_texts(path)
        assert texts[0] == f'{name}: {kind} cell'
        # Every branch is an edge labelled with its op: the op labels, counted, are the cell's ops.
        assert sorted(t for t in texts if t in genotypes.DARTS_OPS) == sorted(b.op for _, b in cell.branches)
        assert sorted(t for t in texts[1:] if t not in genotypes.DARTS_OPS) == sorted(STATES + ['c_{k}'])
        svg = path.read_text()
        assert all(OP_COLORS[b.op] in svg for _, b in cell.branches)


@pytest.mark.parametrize('name', MBCONV_ZOO)
def test_draw_mbconv_strip(name, tmp_path):
    genotype = genotypes.load(name)
    paths = draw(name, tmp_path / 'net.svg')
    assert paths == [tmp_path / 'net.svg']
    texts = svg_texts(paths[0])
    # One box per layer, labelled L1..L21 and with its choice; zero layers shown as skipped.
    assert [t for t in texts if re.fullmatch(r'L\d+', t)] == [f'L{i + 1}' for i in range(len(genotype.layers))]
    assert [t for t in texts if t in genotypes.MBCONV_CHOICES] == list(genotype.layers)
    assert texts.count('(skipped)') == genotype.layers.count('zero')
    assert str(genotype.backbone.head_width) in texts and str(genotype.backbone.stem_width) in texts
    # Colour by choice: a layer of each distinct choice gets that choice's fill colour.
    svg = paths[0].read_text()
    for choice in set(genotype.layers) - {'zero'}:
        assert CHOICE_COLORS[choice] in svg


def test_mbconv_without_zero_layers(tmp_path):
    genotype = genotypes.load('unas_mbconv_gpu')
    dense = genotypes.MBConvGenotype(layers=tuple('3x3_e6' for _ in genotype.layers), name='dense')
    texts = svg_texts(draw(dense, tmp_path / 'dense.svg')[0])
    assert 'zero' not in texts and texts.count('3x3_e6') == len(genotype.layers)


def test_titles_from_yaml_are_literal_one_line_text(tmp_path):
    data = genotypes.load('darts_v2').to_dict()
    data['name'] = 'run "7" \\ with\nnewline $x$ <&>'
    paths = draw(data, tmp_path / 'c.svg')
    assert svg_texts(paths[1])[0] == 'run "7" \\ with newline $x$ <&>: reduce cell'


@pytest.mark.parametrize('name', ['unas_cifar10', 'darts_v2', 'unas_mbconv_gpu'])
def test_png_is_a_real_picture(name, tmp_path):
    for path in draw(name, tmp_path / 'pic.png'):
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            width, height = image.size
            assert image.format == 'PNG' and 300 < width < 5000 and 200 < height < 1200
            assert width > height, 'drawn left to right'
            colours = image.convert('RGB').getcolors(maxcolors=1 << 16)
            assert colours is None or len(colours) > 50, 'more than a blank canvas'


@pytest.mark.parametrize('suffix,magic', [('.png', b'\x89PNG'), ('.pdf', b'%PDF'), ('.SVG', b'<?xml')])
def test_format_from_suffix(tmp_path, suffix, magic):
    (path,) = draw('proxylessnas_gpu', tmp_path / f'net{suffix}')
    assert path.read_bytes().startswith(magic)


def test_same_genotype_same_bytes(tmp_path):
    genotype = genotypes.load('unas_cifar100')
    yaml_path = genotype.to_yaml(tmp_path / 'mine.yaml')
    for suffix in ('.svg', '.pdf'):
        from_path = draw(yaml_path, tmp_path / 'a' / f'x{suffix}')
        from_object = draw(genotype, tmp_path / 'b' / f'x{suffix}')
        assert [p.read_bytes() for p in from_path] == [p.read_bytes() for p in from_object]


def test_bad_suffix_writes_nothing(tmp_path):
    allowed = r"allowed suffixes are \['\.svg', '\.png', '\.pdf'\]"
    with pytest.raises(DrawError, match=r"unsupported output format '\.jpg'; " + allowed):
        draw('unas_cifar10', tmp_path / 'cell.jpg')
    with pytest.raises(DrawError, match=r"'\(no suffix\)'"):
        draw('unas_cifar10', tmp_path / 'cell')
    assert list(tmp_path.iterdir()) == []


def test_missing_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import matplotlib now raises ImportError
    with pytest.raises(DrawError, match=re.escape("pip install 'unas_zoo[demo]'")):
        draw('unas_imagenet', tmp_path / 'cell.svg')
    assert list(tmp_path.iterdir()) == []


def test_failing_write_keeps_the_previous_file(tmp_path, monkeypatch):
    """A save that writes half a file and fails must leave the existing output untouched and no temp file behind."""
    def half_then_fail(self, fname, **kwargs):
        Path(fname).write_text('<svg half')
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(matplotlib.figure.Figure, 'savefig', half_then_fail)
    previous = tmp_path / 'net.svg'
    previous.write_text('previous drawing')
    with pytest.raises(OSError, match='No space left'):
        draw('unas_mbconv_gpu', previous)
    assert previous.read_text() == 'previous drawing'
    assert [p.name for p in tmp_path.iterdir()] == ['net.svg']


def assert_main_fails(capsys, argv: list[str], *fragments: str):
    """``main`` exits 1 with one line on stderr naming each fragment (the CLI runs exactly this)."""
    assert main(argv) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and all(f in lines[0] for f in fragments), lines


def test_main_in_process(tmp_path, capsys):
    assert main(['darts_v1', '-o', str(tmp_path / 'd.pdf')]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / 'd_normal.pdf'), str(tmp_path / 'd_reduce.pdf')]
    assert_main_fails(capsys, ['darts_v1', '-o', str(tmp_path / 'd.bmp')], 'd.bmp', "'.bmp'", '.svg', '.png', '.pdf')
    assert_main_fails(capsys, ['unas_cifar11', '-o', str(tmp_path / 'c.svg')], 'unas_cifar11', 'no such genotype file',
                      'unas_cifar10', 'proxylessnas_gpu')
    with pytest.raises(SystemExit) as usage:
        main(['darts_v1'])
    assert usage.value.code == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and '-o/--output' in err


# ---------------------------------------------------------------------------------------------------------- CLI

def test_cli_draws_without_graphviz_on_path(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))  # nothing on PATH (no `dot`); python is called by absolute path
    result = run_cli('unas_cifar10', '-o', str(tmp_path / 'cell.svg'), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(tmp_path / 'cell_normal.svg'), str(tmp_path / 'cell_reduce.svg')]
    assert 'sep_conv_5x5' in svg_texts(tmp_path / 'cell_normal.svg')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['cell_normal.svg', 'cell_reduce.svg']


def test_cli_missing_matplotlib(tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None; from unas_zoo.draw import main; "
            f"sys.exit(main(['unas_mbconv_gpu', '-o', {str(tmp_path / 'net.svg')!r}]))")
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert_one_line_error(result, 'matplotlib', "pip install 'unas_zoo[demo]'")
    assert list(tmp_path.iterdir()) == []


def test_cli_malformed_file(tmp_path):
    bad = tmp_path / 'bad.yaml'
    bad.write_text(genotypes.load('unas_mbconv_gpu').to_yaml(bad).read_text().replace('7x7_e3', '9x9_e3', 1))
    result = run_cli(str(bad), '-o', str(tmp_path / 'net.svg'))
    assert_one_line_error(result, str(bad), 'layer 5', "'9x9_e3'", "'7x7_e3'")
    assert [p.name for p in tmp_path.iterdir()] == ['bad.yaml']
