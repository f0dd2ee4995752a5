# Types of the C extension built from _maglev.c (setup.py).
import numpy as np
from typing_extensions import Buffer

OFFSET_KEY: tuple[int, int]
SKIP_KEY: tuple[int, int]

def populate(
    ids: tuple[bytes, ...],
    labels: np.ndarray,
    weights: np.ndarray | None,
    seed: int,
    out: np.ndarray,
) -> None: ...
def siphash24(k0: int, k1: int, data: Buffer) -> int: ...
