"""Helpers the benchmark scripts share (run as scripts, they import this from their own folder)."""
from __future__ import annotations

import numpy as np
import pandas as pd


def md(df: pd.DataFrame, digits: int = 3) -> str:
    """A markdown table without extra dependencies (floats to ``digits`` decimals, NaN as ''; tuple
    column names joined by ' / ')."""
    def cell(v) -> str:
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else f"{v:.{digits}f}"
        return "" if v is None else str(v)

    cols = [" / ".join(str(x) for x in c if str(x)) if isinstance(c, tuple) else str(c) for c in df.columns]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(out)
