"""Draw a genotype with graphviz: DARTS cells as DAGs, an MBConv net as the layer strip of the UNAS paper's Fig. 5.

    python -m unas_zoo.draw unas_cifar10 -o cell.svg        # writes cell_normal.svg and cell_reduce.svg
    python -m unas_zoo.draw my_run/genotype.yaml -o net.png  # an MBConv genotype: writes net.png

A DARTS genotype gives one file per cell: ``-o NAME.EXT`` writes ``NAME_normal.EXT`` and ``NAME_reduce.EXT``.
An MBConv genotype gives one file, ``-o`` itself. The format (svg, png, pdf) follows the suffix. Rendering needs the
graphviz ``dot`` program (Debian/Ubuntu: ``apt-get install graphviz``). Files are written atomically.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ._io import atomic_path
from .genotypes import Cell, DartsGenotype, Genotype, GenotypeError, MBConvGenotype, load, parse_mbconv_choice

__all__ = ['DrawError', 'FORMATS', 'cell_to_dot', 'mbconv_to_dot', 'draw', 'render', 'main']

FORMATS = ('svg', 'png', 'pdf')
FONT = 'helvetica'
# Edge colours by op: kernel size sets the hue family, pools and skips are muted.
OP_COLORS = {
    'skip_connect': '#7f7f7f',
    'sep_conv_3x3': '#1f77b4',
    'sep_conv_5x5': '#17456e',
    'sep_conv_7x7': '#0b1f3a',
    'dil_conv_3x3': '#d62728',
    'dil_conv_5x5': '#8c1a1b',
    'max_pool_3x3': '#2ca02c',
    'avg_pool_3x3': '#8c6d31',
}
# MBConv box colours: kernel size sets the hue, expansion the shade (as in the paper's Fig. 5 legend).
CHOICE_COLORS = {
    '3x3_e3': '#c6dbef', '3x3_e6': '#6baed6',
    '5x5_e3': '#c7e9c0', '5x5_e6': '#74c476',
    '7x7_e3': '#fdd0a2', '7x7_e6': '#fd8d3c',
}


class DrawError(ValueError):
    """Drawing cannot proceed (bad output name, graphviz missing or failing); the message says what to do."""


def _quote(text: str) -> str:
    """A DOT double-quoted string (labels may come from user YAML, so escape them)."""
    return '"' + ' '.join(str(text).split()).replace('\\', '\\\\').replace('"', '\\"') + '"'


def _label(*lines: str) -> str:
    return '"' + '\\n'.join(_quote(line)[1:-1] for line in lines) + '"'


def cell_to_dot(cell: Cell, title: str) -> str:
    """A DARTS cell as a DOT digraph: inputs c_{k-2}, c_{k-1}, the intermediate nodes, and the concat output c_{k}.

    Each edge is one branch, labelled and coloured by its op.
    """
    states = ['c_{k-2}', 'c_{k-1}'] + [str(n) for n in range(len(cell.nodes))]
    lines = [
        f'digraph {_quote(title)} {{',
        f'  graph [rankdir=LR, label={_quote(title)}, labelloc=t, fontname={FONT}, fontsize=18];',
        f'  node [shape=box, style="rounded,filled", fontname={FONT}, fontsize=16, penwidth=1.5];',
        f'  edge [fontname={FONT}, fontsize=13, penwidth=1.5];',
        '  { rank=same; ' + ' '.join(_quote(s) for s in states[:2]) + ' }',
    ]
    lines += [f'  {_quote(s)} [fillcolor=darkseagreen2];' for s in states[:2]]
    lines += [f'  {_quote(s)} [fillcolor=lightblue, shape=circle, fixedsize=true, width=0.5];' for s in states[2:]]
    lines.append(f'  {_quote("c_{k}")} [fillcolor=palegoldenrod];')
    for n, branch in cell.branches:
        color = OP_COLORS.get(branch.op, 'black')
        lines.append(f'  {_quote(states[branch.input])} -> {_quote(states[2 + n])} '
                     f'[label={_quote(branch.op)}, color="{color}", fontcolor="{color}"];')
    lines += [f'  {_quote(states[c])} -> {_quote("c_{k}")} [color=gray50];' for c in cell.concat]
    lines.append('}')
    return '\n'.join(lines) + '\n'


def mbconv_to_dot(genotype: MBConvGenotype, title: str) -> str:
    """An MBConv net as a left-to-right strip of layers, one box per layer (Fig. 5 of the UNAS paper).

    Boxes are labelled with kernel and expansion and coloured by choice; box height grows with the kernel.
    'zero' layers (removed from the net) are drawn as dashed empty boxes.
    """
    backbone = genotype.backbone
    lines = [
        f'digraph {_quote(title)} {{',
        f'  graph [rankdir=LR, label={_quote(title)}, labelloc=t, fontname={FONT}, fontsize=18, nodesep=0.15, '
        'ranksep=0.15, compound=true];',
        f'  node [shape=box, style=filled, fontname={FONT}, fontsize=11, fillcolor=gray90, penwidth=1.2];',
        '  edge [arrowsize=0.5];',
        '  stem ' + f'[label={_label("stem", "conv 3x3 /2", str(backbone.stem_width))}];',
        '  first ' + f'[label={_label("MB1 3x3", str(backbone.first_block_width))}];',
    ]
    chain = ['stem', 'first']
    layer = 0
    for s, (width, depth, stride) in enumerate(
            zip(backbone.stage_widths, backbone.stage_depths, backbone.stage_strides)):
        lines.append(f'  subgraph cluster_stage{s} {{')
        stage_label = f'{width} ch' + (f', /{stride}' if stride > 1 else '')
        lines.append(f'    graph [label={_quote(stage_label)}, style="rounded,dashed", color=gray60, fontsize=11];')
        for _ in range(depth):
            choice = genotype.layers[layer]
            node = f'layer{layer + 1:02d}'
            if choice == 'zero':
                lines.append(f'    {node} [label={_label(f"L{layer + 1}", "zero", "(skipped)")}, style=dashed, '
                             'color=gray60, fontcolor=gray50, height=0.5, width=0.6];')
            else:
                kernel, expansion = parse_mbconv_choice(choice)
                label = _label(f'L{layer + 1}', choice, f'MB{expansion} {kernel}x{kernel}')
                lines.append(f'    {node} [label={label}, fillcolor="{CHOICE_COLORS[choice]}", '
                             f'height={0.4 + 0.15 * kernel:.2f}, width=0.7];')
            chain.append(node)
            layer += 1
        lines.append('  }')
    lines.append(f'  head [label={_label("conv 1x1", str(backbone.head_width))}];')
    lines.append(f'  classifier [label={_label("pool", "FC")}];')
    chain += ['head', 'classifier']
    lines.append('  ' + ' -> '.join(chain) + ';')
    lines.append('}')
    return '\n'.join(lines) + '\n'


def _dot_binary() -> str:
    dot = shutil.which('dot')
    if dot is None:
        raise DrawError("graphviz 'dot' program not found on PATH; install graphviz "
                        "(Debian/Ubuntu: sudo apt-get install graphviz; macOS: brew install graphviz; "
                        "conda: conda install graphviz)")
    return dot


def _output_format(output: Path) -> str:
    fmt = output.suffix.lower().lstrip('.')
    if fmt not in FORMATS:
        raise DrawError(f'{output}: unsupported output format {output.suffix or "(no suffix)"!r}; '
                        f'allowed suffixes are {[f".{f}" for f in FORMATS]}')
    return fmt


def render(dot_source: str, output: str | os.PathLike) -> Path:
    """Render DOT text to ``output`` (format from its suffix) atomically: a temp file beside it, then a rename."""
    output = Path(output)
    fmt = _output_format(output)
    dot = _dot_binary()
    with atomic_path(output) as tmp:
        result = subprocess.run([dot, f'-T{fmt}', '-o', str(tmp)], input=dot_source, text=True,
                                capture_output=True, check=False)
        if result.returncode != 0 or not tmp.is_file():
            detail = ' '.join(result.stderr.split()) or f'exit code {result.returncode}'
            raise DrawError(f'{output}: graphviz dot failed: {detail}')
    return output


def draw(genotype: Genotype | str | os.PathLike | dict, output: str | os.PathLike) -> list[Path]:
    """Draw ``genotype`` (anything :func:`unas_zoo.genotypes.load` takes) and return the files written.

    DARTS: ``output`` NAME.EXT gives NAME_normal.EXT and NAME_reduce.EXT. MBConv: ``output`` itself.
    """
    genotype = load(genotype)
    output = Path(output)
    _output_format(output)  # refuse a bad suffix before anything is drawn
    _dot_binary()
    name = genotype.name or 'genotype'
    if isinstance(genotype, DartsGenotype):
        return [
            render(cell_to_dot(cell, f'{name}: {kind} cell'), output.with_name(f'{output.stem}_{kind}{output.suffix}'))
            for kind, cell in (('normal', genotype.normal), ('reduce', genotype.reduce))
        ]
    return [render(mbconv_to_dot(genotype, f'{name}: MBConv layers 1-{len(genotype.layers)}'), output)]


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr, like every other error of this CLI."""

    def error(self, message: str):
        self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def main(argv: list[str] | None = None) -> int:
    parser = _OneLineParser(
        prog='python -m unas_zoo.draw',
        description='Draw a genotype: DARTS cells (one file per cell) or an MBConv net (one layer strip).')
    parser.add_argument('genotype', help='zoo name (e.g. unas_cifar10) or path to a genotype YAML file')
    parser.add_argument('-o', '--output', required=True,
                        help=f'output file, format from the suffix ({", ".join(FORMATS)}); for a DARTS genotype '
                             'NAME.EXT becomes NAME_normal.EXT and NAME_reduce.EXT')
    args = parser.parse_args(argv)
    try:
        paths = draw(args.genotype, args.output)
    except (GenotypeError, DrawError) as e:
        print(f'error: {" ".join(str(e).split())}', file=sys.stderr)
        return 1
    except OSError as e:
        print(f'error: {e.filename or args.output}: {e.strerror or e}', file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
