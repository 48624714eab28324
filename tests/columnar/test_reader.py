"""Reading JSON blocks: where a refused piece is cut."""

from __future__ import annotations

import pyarrow as pa

from headwater.columnar.reader import _read_json


def test_a_refused_piece_names_the_row_to_cut_at():
    """pyarrow's refusal names the odd row (0-based), which is where the piece is cut."""
    good = b'{"id":"a","t":1,"k":"x","amount":1.5}\n'
    odd = b'{"id":"b","t":2,"k":"x","amount":"12 EUR"}\n'
    assert _read_json(good * 5 + odd + good * 3) == 5
    assert isinstance(_read_json(good * 3), pa.Table)
