"""APro on the synthetic data: against the partial-CE flow for scribbles and points on both styles, the weight of
L_u, and Table 4 (which targets) / Table 7 (parallel or cascaded) at the default profile; prints a table (val mIoU
of the trained network, mIoU of its stored pseudo labels on ``data.label_split``).

    python bench/bench_apro_ablation.py OUT [--profile default] [--set KEY=VALUE ...] [--only ROW ...]

Each row trains one network (about 4 minutes for APro, 2 for partial CE on 2 CPU cores at the default profile;
``--set segmentation.train.threads=1`` and two processes with disjoint ``--only`` rows use both cores best).
"""
from __future__ import annotations

from ablation import main_rows

B, P = ["data.synthetic.style=b"], ["data.sparse.kind=point"]
ROWS: dict[str, tuple[str, list[str]]] = {
    "a scribbles: APro": ("apro_voc", []),
    "a scribbles: partial CE flow": ("partial_ce_voc", []),
    "a points: APro": ("apro_voc", P),
    "a points: partial CE flow": ("partial_ce_voc", P),
    "b scribbles: APro": ("apro_voc", B),
    "b scribbles: partial CE flow": ("partial_ce_voc", B),
    "b points: APro": ("apro_voc", [*B, *P]),
    "b points: partial CE flow": ("partial_ce_voc", [*B, *P]),
    "a scribbles: L_u weight 1": ("apro_voc", ["apro.unary_weight=1"]),
    "a points: L_u weight 1": ("apro_voc", [*P, "apro.unary_weight=1"]),
    "b scribbles: L_u weight 1": ("apro_voc", [*B, "apro.unary_weight=1"]),
    "a scribbles, Table 4: GP": ("apro_voc", ["apro.propagation=gp"]),
    "a scribbles, Table 4: LP": ("apro_voc", ["apro.propagation=lp"]),
    "a scribbles, Table 7: GP-LP-C": ("apro_voc", ["apro.propagation=gp-lp-c"]),
    "a scribbles, Table 7: LP-GP-C": ("apro_voc", ["apro.propagation=lp-gp-c"]),
}


if __name__ == "__main__":
    main_rows(ROWS)
