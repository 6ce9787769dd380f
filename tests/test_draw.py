"""Drawing genotypes with graphviz: the library functions, the files they write and the CLI's exit codes/messages."""
import os
import re
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from unas_zoo import genotypes
from unas_zoo.draw import CHOICE_COLORS, DrawError, cell_to_dot, draw, main, mbconv_to_dot, render

DARTS_ZOO = [n for n in genotypes.available() if genotypes.load(n).space == 'darts']
MBCONV_ZOO = [n for n in genotypes.available() if genotypes.load(n).space == 'mbconv']


def svg_texts(path: Path) -> list[str]:
    """Every text run of an SVG (graphviz writes one <text> per label line); parsing also checks it is well formed."""
    root = ET.parse(path).getroot()
    return [el.text for el in root.iter() if el.tag.endswith('text') and el.text]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'unas_zoo.draw', *args], capture_output=True, text=True,
                          env=env, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str):
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], f'{fragment!r} not in {lines[0]!r}'


def test_zoo_has_both_spaces():
    assert len(DARTS_ZOO) >= 7 and len(MBCONV_ZOO) >= 2


@pytest.mark.parametrize('name', DARTS_ZOO)
def test_draw_darts_cells(name, tmp_path):
    genotype = genotypes.load(name)
    paths = draw(name, tmp_path / 'cell.svg')
    assert paths == [tmp_path / 'cell_normal.svg', tmp_path / 'cell_reduce.svg']
    assert sorted(p.name for p in tmp_path.iterdir()) == ['cell_normal.svg', 'cell_reduce.svg'], 'no temp files'
    for path, kind, cell in zip(paths, ('normal', 'reduce'), (genotype.normal, genotype.reduce)):
        texts = svg_texts(path)
        assert f'{name}: {kind} cell' in texts
        # Every branch is an edge labelled with its op: the op labels, counted, are the cell's ops.
        ops = sorted(t for t in texts if t in genotypes.DARTS_OPS)
        assert ops == sorted(b.op for _, b in cell.branches)
        for state in ('c_{k-2}', 'c_{k-1}', 'c_{k}', '0', '1', '2', '3'):
            assert state in texts


@pytest.mark.parametrize('name', MBCONV_ZOO)
def test_draw_mbconv_strip(name, tmp_path):
    genotype = genotypes.load(name)
    paths = draw(name, tmp_path / 'net.svg')
    assert paths == [tmp_path / 'net.svg']
    texts = svg_texts(paths[0])
    # One box per layer, labelled L1..L21 and with its choice; zero layers shown as skipped.
    assert [t for t in texts if re.fullmatch(r'L\d+', t)] == [f'L{i + 1}' for i in range(len(genotype.layers))]
    choices = [t for t in texts if t in genotypes.MBCONV_CHOICES]
    assert choices == list(genotype.layers)
    assert texts.count('(skipped)') == genotype.layers.count('zero')
    assert str(genotype.backbone.head_width) in texts and str(genotype.backbone.stem_width) in texts
    # Colour by choice: a layer of each distinct choice gets that choice's fill colour.
    svg = paths[0].read_text()
    for choice in set(genotype.layers) - {'zero'}:
        assert CHOICE_COLORS[choice] in svg


def test_cell_to_dot_structure():
    cell = genotypes.load('pdarts').normal
    dot = cell_to_dot(cell, 'pdarts normal')
    op_edges = re.findall(r'"([^"]+)" -> "([^"]+)" \[label="(\w+)"', dot)
    states = ['c_{k-2}', 'c_{k-1}', '0', '1', '2', '3']
    assert op_edges == [(states[b.input], str(n), b.op) for n, b in cell.branches]
    concat_edges = re.findall(r'"([^"]+)" -> "c_\{k\}"', dot)
    assert concat_edges == [states[c] for c in cell.concat]


def test_titles_from_yaml_are_escaped(tmp_path):
    cell = genotypes.load('darts_v2').reduce
    title = 'run "7" \\ with\nnewline'
    out = render(cell_to_dot(cell, title), tmp_path / 'c.svg')
    assert 'run "7" \\ with newline' in svg_texts(out)


def test_mbconv_to_dot_without_zero_layers():
    genotype = genotypes.load('unas_mbconv_gpu')
    all_blocks = genotypes.MBConvGenotype(layers=tuple('3x3_e6' for _ in genotype.layers))
    dot = mbconv_to_dot(all_blocks, 'dense')
    assert 'zero' not in dot and dot.count('3x3_e6') == len(genotype.layers)


@pytest.mark.parametrize('suffix,magic', [('.png', b'\x89PNG'), ('.pdf', b'%PDF'), ('.SVG', b'<?xml')])
def test_format_from_suffix(tmp_path, suffix, magic):
    (path,) = draw('proxylessnas_gpu', tmp_path / f'net{suffix}')
    assert path.read_bytes().startswith(magic)


def test_yaml_path_and_genotype_object(tmp_path):
    genotype = genotypes.load('unas_cifar100')
    yaml_path = genotype.to_yaml(tmp_path / 'mine.yaml')
    from_path = draw(yaml_path, tmp_path / 'a' / 'x.svg')
    from_object = draw(genotype, tmp_path / 'b' / 'x.svg')
    assert [p.read_text() for p in from_path] == [p.read_text() for p in from_object]


def test_bad_suffix_writes_nothing(tmp_path):
    allowed = r"allowed suffixes are \['\.svg', '\.png', '\.pdf'\]"
    with pytest.raises(DrawError, match=r"unsupported output format '\.jpg'; " + allowed):
        draw('unas_cifar10', tmp_path / 'cell.jpg')
    with pytest.raises(DrawError, match=r"'\(no suffix\)'"):
        draw('unas_cifar10', tmp_path / 'cell')
    assert list(tmp_path.iterdir()) == []


def test_missing_dot_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv('PATH', str(tmp_path))
    with pytest.raises(DrawError, match="graphviz 'dot' program not found on PATH.*apt-get install graphviz"):
        draw('unas_imagenet', tmp_path / 'cell.svg')
    assert list(tmp_path.iterdir()) == []


def test_failing_dot_keeps_the_previous_file(tmp_path, monkeypatch):
    """A dot that writes half a file and fails must leave the existing output untouched and no temp file behind."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    fake_dot = bin_dir / 'dot'
    fake_dot.write_text('#!/bin/sh\necho "<svg half" > "$3"\necho "Error: syntax error in line 3" >&2\nexit 1\n')
    fake_dot.chmod(fake_dot.stat().st_mode | stat.S_IEXEC)
    out_dir = tmp_path / 'out'
    out_dir.mkdir()
    previous = out_dir / 'net.svg'
    previous.write_text('previous drawing')
    monkeypatch.setenv('PATH', str(bin_dir))
    with pytest.raises(DrawError, match=r'net\.svg: graphviz dot failed: Error: syntax error in line 3'):
        draw('unas_mbconv_gpu', previous)
    assert previous.read_text() == 'previous drawing'
    assert [p.name for p in out_dir.iterdir()] == ['net.svg']


def test_main_in_process(tmp_path, capsys):
    assert main(['darts_v1', '-o', str(tmp_path / 'd.pdf')]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / 'd_normal.pdf'), str(tmp_path / 'd_reduce.pdf')]
    assert main(['darts_v1', '-o', str(tmp_path / 'd.gif')]) == 1
    assert capsys.readouterr().err.count('\n') == 1
    with pytest.raises(SystemExit) as usage:
        main(['darts_v1'])
    assert usage.value.code == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and '-o/--output' in err


# ---------------------------------------------------------------------------------------------------------- CLI

def test_cli_draws_a_zoo_genotype(tmp_path):
    result = run_cli('unas_cifar10', '-o', str(tmp_path / 'cell.svg'))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(tmp_path / 'cell_normal.svg'), str(tmp_path / 'cell_reduce.svg')]
    assert 'sep_conv_5x5' in svg_texts(tmp_path / 'cell_normal.svg')


def test_cli_unknown_genotype(tmp_path):
    result = run_cli('unas_cifar11', '-o', str(tmp_path / 'cell.svg'))
    assert_one_line_error(result, 'unas_cifar11', 'no such genotype file', 'unas_cifar10', 'proxylessnas_gpu')
    assert list(tmp_path.iterdir()) == []


def test_cli_malformed_file(tmp_path):
    bad = tmp_path / 'bad.yaml'
    bad.write_text(genotypes.load('unas_mbconv_gpu').to_yaml(bad).read_text().replace('7x7_e3', '9x9_e3', 1))
    result = run_cli(str(bad), '-o', str(tmp_path / 'net.svg'))
    assert_one_line_error(result, str(bad), 'layer 5', "'9x9_e3'", "'7x7_e3'")
    assert [p.name for p in tmp_path.iterdir()] == ['bad.yaml']


def test_cli_bad_suffix(tmp_path):
    result = run_cli('unas_cifar10', '-o', str(tmp_path / 'cell.bmp'))
    assert_one_line_error(result, 'cell.bmp', "'.bmp'", '.svg', '.png', '.pdf')
    assert list(tmp_path.iterdir()) == []


def test_cli_missing_dot(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))  # no `dot` on PATH; python itself is called by absolute path
    result = run_cli('unas_mbconv_gpu', '-o', str(tmp_path / 'net.svg'), env=env)
    assert_one_line_error(result, "graphviz 'dot' program not found", 'apt-get install graphviz')
    assert list(tmp_path.iterdir()) == []
