"""Draw a genotype with matplotlib: DARTS cells as layered DAGs, an MBConv net as the layer strip of UNAS's Fig. 5.

    python -m unas_zoo.draw unas_cifar10 -o cell.svg        # writes cell_normal.svg and cell_reduce.svg
    python -m unas_zoo.draw my_run/genotype.yaml -o net.png  # an MBConv genotype: writes net.png

A DARTS genotype gives one file per cell: ``-o NAME.EXT`` writes ``NAME_normal.EXT`` and ``NAME_reduce.EXT``.
An MBConv genotype gives one file, ``-o`` itself. The format (svg, png, pdf) follows the suffix. Pure Python: needs
only matplotlib (``pip install 'unas_zoo[demo]'``), no system graphviz. SVG text stays text (searchable, testable).
Files are written atomically.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ._io import atomic_path
from ._layered import Layout, layered_layout
from .genotypes import Cell, DartsGenotype, Genotype, GenotypeError, MBConvGenotype, load, parse_mbconv_choice

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ['DrawError', 'FORMATS', 'OP_COLORS', 'CHOICE_COLORS', 'draw', 'cell_layout', 'cell_figure', 'mbconv_figure',
           'main']

FORMATS = ('svg', 'png', 'pdf')
# DejaVu Sans ships with matplotlib, so text is measured and rendered alike everywhere; SVG viewers without it fall
# back to a sans-serif of similar or smaller width.
FONT = ['DejaVu Sans', 'sans-serif']
DPI = 150
TITLE_SIZE, STATE_SIZE, LABEL_SIZE = 12.0, 11.0, 9.0
PAD, MARGIN, ARROW = 5.0, 12.0, 7.0
STRIP_WIDTH = 800.0  # points: the MBConv strip wraps into rows that stay legible on a model card
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
STATE_COLORS = {'input': '#b4eeb4', 'node': '#add8e6', 'output': '#eee8aa', 'fixed': '#e5e5e5'}


class DrawError(ValueError):
    """Drawing cannot proceed (bad output name, matplotlib missing); the message says what to do."""


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise DrawError("drawing needs matplotlib, which is not installed: pip install 'unas_zoo[demo]'") from None


def _output_format(output: Path) -> str:
    fmt = output.suffix.lower().lstrip('.')
    if fmt not in FORMATS:
        raise DrawError(f'{output}: unsupported output format {output.suffix or "(no suffix)"!r}; '
                        f'allowed suffixes are {[f".{f}" for f in FORMATS]}')
    return fmt


def _plain(text: str) -> str:
    """One line of literal text (titles may come from user YAML): no newlines, and '$' never starts mathtext."""
    return ' '.join(str(text).split()).replace('$', r'\$')


def _text_size(text: str, size: float) -> tuple[float, float]:
    """Width and height in points of (possibly multi-line) ``text`` at font ``size``, as matplotlib lays it out."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import text_to_path
    prop = FontProperties(family=FONT, size=size)
    lines = text.split('\n')
    width = max(text_to_path.get_text_width_height_descent(line, prop, ismath=False)[0] for line in lines)
    return width, 1.2 * size * len(lines)


def _canvas(width: float, height: float, left: float, top: float):
    """A figure of ``width`` x ``height`` points whose data units are points, y down, origin at (-left, -top)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width / 72, height / 72))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-left, width - left)
    ax.set_ylim(height - top, -top)
    ax.axis('off')
    return fig, ax


def _save(fig, output: Path) -> Path:
    """Write ``fig`` atomically; fixed metadata and SVG ids, so the same drawing gives the same bytes."""
    import matplotlib
    fmt = _output_format(output)
    metadata = {'svg': {'Date': None}, 'pdf': {'CreationDate': None}, 'png': {}}[fmt]
    with matplotlib.rc_context({'svg.fonttype': 'none', 'svg.hashsalt': 'unas_zoo'}), atomic_path(output) as tmp:
        fig.savefig(tmp, format=fmt, dpi=DPI, metadata=metadata)
    return output


def _box(ax, x: float, y: float, width: float, height: float, text: str, size: float, fill: str,
         edge: str = '#333333', text_color: str = 'black', dashed: bool = False, zorder: int = 2) -> None:
    from matplotlib.patches import FancyBboxPatch
    ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height, boxstyle='round,pad=0,rounding_size=4',
                                facecolor=fill, edgecolor=edge, linewidth=1.0, linestyle='--' if dashed else '-',
                                zorder=zorder))
    ax.text(x, y, text, ha='center', va='center', fontsize=size, fontfamily=FONT, color=text_color,
            linespacing=1.2, zorder=zorder + 1)


def _arrow(ax, runs: tuple[tuple[float, float, float], ...], color: str) -> None:
    """A line along horizontal ``runs`` (joined by S-curves) ending in an arrowhead at the last run's end."""
    from matplotlib.patches import PathPatch, Polygon
    from matplotlib.path import Path as MplPath
    tip_x, tip_y = runs[-1][1], runs[-1][2]
    verts: list[tuple[float, float]] = []
    codes: list[int] = []
    for i, (x0, x1, y) in enumerate(runs):
        last = i == len(runs) - 1
        if last:
            x1 = tip_x - ARROW
            x0 = min(x0, x1)
        if i == 0:
            verts.append((x0, y))
            codes.append(MplPath.MOVETO)
        else:
            px, py = verts[-1]
            bend = (x0 - px) / 2
            verts += [(px + bend, py), (x0 - bend, y), (x0, y)]
            codes += [MplPath.CURVE4] * 3
        verts.append((x1, y))
        codes.append(MplPath.LINETO)
    ax.add_patch(PathPatch(MplPath(verts, codes), facecolor='none', edgecolor=color, linewidth=1.3, zorder=1))
    head = [(tip_x, tip_y), (tip_x - ARROW, tip_y - 3), (tip_x - ARROW, tip_y + 3)]
    ax.add_patch(Polygon(head, closed=True, facecolor=color, edgecolor=color, linewidth=0.5, zorder=1))


STATES = ('c_{k-2}', 'c_{k-1}', 'c_{k}')  # a cell's two inputs and its output; nodes are named 0, 1, ...


def cell_layout(cell: Cell) -> Layout:
    """The cell's geometry in points: one edge per branch (labelled with its op), then one per concat input."""
    _require_matplotlib()  # text is measured with matplotlib's fonts
    nodes = [str(n) for n in range(len(cell.nodes))]
    states = [*STATES[:2], *nodes]
    sizes = {}
    for state in STATES:
        width, height = _text_size(state, STATE_SIZE)
        sizes[state] = (width + 3 * PAD, height + 2 * PAD)
    diameter = 2 * PAD + 1.2 * STATE_SIZE + 6
    sizes = {state: sizes.get(state, (diameter, diameter)) for state in [*states, STATES[2]]}  # topological order
    labels = {}
    for _, branch in cell.branches:
        width, height = _text_size(branch.op, LABEL_SIZE)
        labels[branch.op] = (width + 2 * PAD, height + PAD)
    edges = [(states[b.input], nodes[n], labels[b.op]) for n, b in cell.branches]
    edges += [(states[c], STATES[2], None) for c in cell.concat]
    return layered_layout(sizes, edges, last=STATES[2], circles=nodes)


def cell_figure(cell: Cell, title: str) -> Figure:
    """A DARTS cell as a matplotlib Figure: inputs c_{k-2}, c_{k-1}, the nodes, and the concat output c_{k}.

    Each branch is an edge from its input to its node, labelled and coloured by its op; grey edges feed the concat.
    """
    layout = cell_layout(cell)
    from matplotlib.patches import Circle
    title_width, title_height = _text_size(_plain(title), TITLE_SIZE)
    width = max(layout.width, title_width) + 2 * MARGIN
    top = MARGIN + title_height + 2 * PAD
    fig, ax = _canvas(width, layout.height + top + MARGIN, (width - layout.width) / 2, top)
    ax.text(layout.width / 2, -top + MARGIN, _plain(title), ha='center', va='top', fontsize=TITLE_SIZE,
            fontfamily=FONT, fontweight='bold')
    ops = [b.op for _, b in cell.branches]
    for e, runs in enumerate(layout.runs):
        _arrow(ax, runs, OP_COLORS.get(ops[e], 'black') if e < len(ops) else '#999999')
    for op, label in zip(ops, layout.labels):
        color = OP_COLORS.get(op, 'black')
        _box(ax, label.x, label.y, label.width, label.height, op, LABEL_SIZE, 'white', color, color, zorder=3)
    for state, box in layout.nodes.items():
        if state in STATES:
            fill = STATE_COLORS['output' if state == STATES[2] else 'input']
            _box(ax, box.x, box.y, box.width, box.height, state, STATE_SIZE, fill)
        else:
            ax.add_patch(Circle((box.x, box.y), box.width / 2, facecolor=STATE_COLORS['node'], edgecolor='#333333',
                                linewidth=1.0, zorder=2))
            ax.text(box.x, box.y, state, ha='center', va='center', fontsize=STATE_SIZE, fontfamily=FONT, zorder=3)
    return fig


def _mbconv_boxes(genotype: MBConvGenotype) -> list[list[tuple[str, str, float, bool]]]:
    """Groups of (text, fill, extra height, dashed): the fixed stem, one group per stage, the fixed head."""
    backbone = genotype.backbone
    groups = [[(f'stem\nconv 3x3 /2\n{backbone.stem_width}', STATE_COLORS['fixed'], 0.0, False),
               (f'MB1 3x3\n{backbone.first_block_width}', STATE_COLORS['fixed'], 0.0, False)]]
    layer = 0
    for depth in backbone.stage_depths:
        group = []
        for _ in range(depth):
            choice = genotype.layers[layer]
            layer += 1
            if choice == 'zero':
                group.append((f'L{layer}\nzero\n(skipped)', 'white', 0.0, True))
            else:
                kernel, expansion = parse_mbconv_choice(choice)
                group.append((f'L{layer}\n{choice}\nMB{expansion} {kernel}x{kernel}', CHOICE_COLORS[choice],
                              4.0 * kernel, False))
        groups.append(group)
    groups.append([(f'conv 1x1\n{backbone.head_width}', STATE_COLORS['fixed'], 0.0, False),
                   ('pool\nFC', STATE_COLORS['fixed'], 0.0, False)])
    return groups


def _strip_rows(groups: list[list], stage_labels: list[str], box_width: float, gap: float, frame: float,
                limit: float) -> tuple[list[tuple[float, int]], list[tuple[float, float, str, int]], float]:
    """Box centres (x, row) and stage frames (left, width, label, row), groups wrapped at width ``limit``."""
    centres, frames, x, row, width = [], [], 0.0, 0, 0.0
    for g, group in enumerate(groups):
        stage = 0 < g < len(groups) - 1
        span = len(group) * box_width + (len(group) - 1) * gap
        slack = max(_text_size(stage_labels[g - 1], LABEL_SIZE)[0] + 2 * PAD - span, 0.0) if stage else 0.0
        outer = span + (2 * frame + slack if stage else 0.0)
        if g and x + gap + outer > limit:  # wrap: arrows leave this row's end and enter the next row's start
            row, x, width = row + 1, 0.0, max(width, x + gap)
        x += (gap if g else 0.0) + (frame + slack / 2 if stage else 0.0)
        if stage:
            frames.append((x - frame - slack / 2, outer, stage_labels[g - 1], row))
        centres += [(x + i * (box_width + gap) + box_width / 2, row) for i in range(len(group))]
        x += span + (frame + slack / 2 if stage else 0.0)
        width = max(width, x)
    return centres, frames, width


def mbconv_figure(genotype: MBConvGenotype, title: str) -> Figure:
    """An MBConv net as a matplotlib Figure: the strip of layers of the UNAS paper's Fig. 5, wrapped into rows.

    Boxes give kernel and expansion, coloured by choice and taller for larger kernels; dashed frames group the
    stages (width, stride); 'zero' layers (removed from the net) are dashed empty boxes.
    """
    _require_matplotlib()
    from matplotlib.patches import FancyBboxPatch
    groups = _mbconv_boxes(genotype)
    backbone = genotype.backbone
    stage_labels = [f'{w} ch' + (f', /{s}' if s > 1 else '') for w, s in
                    zip(backbone.stage_widths, backbone.stage_strides)]
    box_width = max(_text_size(text, LABEL_SIZE)[0] for group in groups for text, *_ in group) + 2 * PAD
    text_height = _text_size('L\nL\nL', LABEL_SIZE)[1]
    tallest = text_height + 2 * PAD + max(extra for group in groups for _, _, extra, _ in group)
    gap, frame = 2.5 * ARROW, PAD
    label_height = _text_size('ch', LABEL_SIZE)[1]
    one_row = _strip_rows(groups, stage_labels, box_width, gap, frame, math.inf)[2]
    num_rows = math.ceil(one_row / STRIP_WIDTH)
    limit = one_row / num_rows  # the narrowest wrap that needs no more rows: rows of about equal widths
    while (layout := _strip_rows(groups, stage_labels, box_width, gap, frame, limit))[0][-1][1] >= num_rows:
        limit += gap
    centres, frames, x = layout
    pitch = tallest + 2 * frame + label_height + 3 * PAD  # from one row to the next
    title_width, title_height = _text_size(_plain(title), TITLE_SIZE)
    width = max(x, title_width) + 2 * MARGIN
    top = MARGIN + title_height + 2 * PAD + label_height + frame
    fig, ax = _canvas(width, top + centres[-1][1] * pitch + tallest + frame + MARGIN, (width - x) / 2, top)
    ax.text(x / 2, -top + MARGIN, _plain(title), ha='center', va='top', fontsize=TITLE_SIZE, fontfamily=FONT,
            fontweight='bold')
    for left, span, label, row in frames:
        ax.add_patch(FancyBboxPatch((left, row * pitch - frame), span, tallest + 2 * frame, linestyle='--',
                                    boxstyle='round,pad=0,rounding_size=6', facecolor='none', edgecolor='#999999'))
        ax.text(left + span / 2, row * pitch - frame - 2, label, ha='center', va='bottom', fontsize=LABEL_SIZE,
                fontfamily=FONT, color='#555555')
    boxes = [box for group in groups for box in group]
    for i, ((centre, row), (text, fill, extra, dashed)) in enumerate(zip(centres, boxes)):
        middle = row * pitch + tallest / 2
        _box(ax, centre, middle, box_width, text_height + 2 * PAD + extra, text, LABEL_SIZE, fill,
             '#999999' if dashed else '#333333', '#777777' if dashed else 'black', dashed)
        if i and centres[i - 1][1] == row:
            _arrow(ax, ((centres[i - 1][0] + box_width / 2, centre - box_width / 2, middle),), '#555555')
        elif i:  # a wrapped row: an arrow leaves the previous row's end and enters this row's start
            end = centres[i - 1][0] + box_width / 2
            _arrow(ax, ((end, end + gap, middle - pitch),), '#555555')
            _arrow(ax, ((centre - box_width / 2 - gap, centre - box_width / 2, middle),), '#555555')
    return fig


def draw(genotype: Genotype | str | os.PathLike | dict, output: str | os.PathLike) -> list[Path]:
    """Draw ``genotype`` (anything :func:`unas_zoo.genotypes.load` takes) and return the files written.

    DARTS: ``output`` NAME.EXT gives NAME_normal.EXT and NAME_reduce.EXT. MBConv: ``output`` itself.
    """
    genotype = load(genotype)
    output = Path(output)
    _output_format(output)  # refuse a bad suffix before anything is drawn
    _require_matplotlib()
    name = genotype.name or 'genotype'
    if isinstance(genotype, DartsGenotype):
        cells = (('normal', genotype.normal), ('reduce', genotype.reduce))
        return [_save(cell_figure(cell, f'{name}: {kind} cell'), output.with_stem(f'{output.stem}_{kind}'))
                for kind, cell in cells]
    return [_save(mbconv_figure(genotype, f'{name}: MBConv layers 1-{len(genotype.layers)}'), output)]


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
