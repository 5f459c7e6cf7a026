"""The published claims each canonical study is checked against, one module per study in sweeps/.

Each module holds TITLE, the `--set` overrides that size the study to the 2-core machine (SETS)
with the reason for each (WHY), and CLAIMS: (paper, statement, check), where check is a pure
function of the page's results dict returning a Verdict (claim.py).
"""

from claims import emergence_parity, grokking_modular, mirage_addition

STUDIES = {
    "grokking_modular": grokking_modular,
    "emergence_parity": emergence_parity,
    "mirage_addition": mirage_addition,
}
