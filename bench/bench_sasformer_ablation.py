"""SASFormer on the synthetic data: against its α = 0 SegFormer baseline and the partial-CE flow, for scribbles
and points on both styles, and Table 3 (which blocks) / Table 4 (which distance) at the default profile; prints a
table (val mIoU of the trained network, mIoU of its stored predictions on ``data.label_split``).

    python bench/bench_sasformer_ablation.py OUT [--profile default] [--set KEY=VALUE ...] [--only ROW ...]

Each row trains one network (about 3 minutes on 2 CPU cores at the default profile; ``--set
sasformer.train.threads=1`` and two processes with disjoint ``--only`` rows use both cores best).
"""
from __future__ import annotations

from ablation import main_rows

B, P = ["data.synthetic.style=b"], ["data.sparse.kind=point"]
ROWS: dict[str, tuple[str, list[str]]] = {
    "a scribbles: SASFormer": ("sasformer_voc", []),
    "a scribbles: α = 0 (SegFormer)": ("sasformer_voc", ["sasformer.alpha=0"]),
    "a scribbles: partial CE flow": ("partial_ce_voc", []),
    "a points: SASFormer": ("sasformer_voc", P),
    "a points: α = 0": ("sasformer_voc", [*P, "sasformer.alpha=0"]),
    "a points: partial CE flow": ("partial_ce_voc", P),
    "b scribbles: SASFormer": ("sasformer_voc", B),
    "b scribbles: α = 0": ("sasformer_voc", [*B, "sasformer.alpha=0"]),
    "b scribbles: partial CE flow": ("partial_ce_voc", B),
    "b points: SASFormer": ("sasformer_voc", [*B, *P]),
    "b points: α = 0": ("sasformer_voc", [*B, *P, "sasformer.alpha=0"]),
    "b points: partial CE flow": ("partial_ce_voc", [*B, *P]),
    "a scribbles, Table 3: block 1": ("sasformer_voc", ["sasformer.blocks=[1]"]),
    "a scribbles, Table 3: blocks 1–2": ("sasformer_voc", ["sasformer.blocks=[1,2]"]),
    "a scribbles, Table 3: blocks 1–3": ("sasformer_voc", ["sasformer.blocks=[1,2,3]"]),
    "a scribbles, Table 3: block 4": ("sasformer_voc", ["sasformer.blocks=[4]"]),
    "a scribbles, Table 4: l2": ("sasformer_voc", ["sasformer.distance=l2"]),
    "a scribbles, Table 4: kl": ("sasformer_voc", ["sasformer.distance=kl"]),
    "a scribbles, Table 4: ce": ("sasformer_voc", ["sasformer.distance=ce"]),
}


if __name__ == "__main__":
    main_rows(ROWS)
