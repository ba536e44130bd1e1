"""The seed story's synthetic data (demo, tests, bench): 7 of the roster's people hidden in a
public dashboard export of 5,000 rows, in a shape the signatures alone would not trip on.

The export's columns are ``id,subject,date,location,amount,status``: public rows name programmes,
dates and cities; a hidden person's row carries their name ("MARIA L GARCIA"), date of birth (in
an unlabelled ``date`` column) and street address. The signatures see a few name+address records
(an alert at most); the index sees 7 people of its roster.
"""
from __future__ import annotations

import random

from sensor import synth

PROGRAMMES = ["PERMIT RENEWALS", "NEW APPLICATIONS", "APPEALS", "TRAINING COURSES", "RANGE INSPECTIONS"]
HEADER = "id,subject,date,location,amount,status\n"


def census_people(rows: list[dict], n: int, seed: int = 1) -> list[int]:
    """Row ids of ``n`` roster people whose first and last names are in the census lists (the name
    signature recognises them; invented names it would not)."""
    firsts, lasts = set(synth._words("first-names.txt")), set(synth._words("surnames.txt"))
    ok = [i for i, r in enumerate(rows) if r["first_name"] in firsts and r["last_name"] in lasts]
    return sorted(random.Random(seed).sample(ok, n))


def public_rows(n: int, seed: int = 9) -> list[str]:
    rng = random.Random(seed)
    return [f"{100000 + i},{rng.choice(PROGRAMMES)} {rng.choice(synth.COUNTIES)},"
            f"20{rng.randint(15, 23)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d},"
            f"{rng.choice(synth.CITIES)},{rng.randint(0, 99999)},{rng.choice(['OPEN', 'CLOSED', 'PENDING'])}\n"
            for i in range(n)]


def dashboard(rows: list[dict], hidden: list[int], n_public: int = 5000) -> bytes:
    """The export: ``n_public`` public rows with the ``hidden`` roster rows spread among them."""
    body = public_rows(n_public)
    rng = random.Random(3)
    for rid in hidden:
        r = rows[rid]
        body.insert(rng.randrange(len(body) + 1),
                    f"{900000 + rid},{r['first_name']} {r['middle_initial']} {r['last_name']},"
                    f"{r['date_of_birth']},{r['street_address']},{rng.randint(0, 99999)},OPEN\n")
    return (HEADER + "".join(body)).encode()
