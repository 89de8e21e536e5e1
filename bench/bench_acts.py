"""One organisation's month for one insurer, as a register: build (values, layout from the region's schema,
the ФЛК-side checks with both schemas), serialise to windows-1251, ZIP, sign detached (GOST), and the
insurer's side: unpack and run the ФЛК with a V021 directory. Prints seconds per stage and the sizes.

    .venv/bin/python bench/bench_acts.py [--records 1000 10000] [--edition z75-3.2]
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.acts.archive import RegisterArchive
from adapters.acts.builder import build_register
from demo.ca import create_demo_keys, demo_signer
from demo.emulators.insurer import check_archive
from gateway.oms.archive import to_bytes, unpack_register
from tests.unit.test_service_act import EDITIONS, edition, month_of_records, profile


def records(key: str, n: int) -> list:
    """``n`` records of one clinic for one insurer: the synthetic month, repeated with fresh ids and patients."""
    base = [r for r in month_of_records(key) if (r.code_mo, r.insurer) == ("020101", "smo-alfa")]
    rng = random.Random(n)
    out = []
    while len(out) < n:
        for r in base:
            suffix = len(out) // len(base)
            out.append(replace(r, record_id=f"{r.record_id}-{len(out)}", enp=f"{int(r.enp) + suffix:016d}"[-16:],
                               quantity=Decimal(rng.choice(["1", "0.5", "2"]))))
            if len(out) == n:
                break
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--edition", default="z75-3.2", choices=sorted(EDITIONS))
    args = parser.parse_args()
    keys = Path(tempfile.mkdtemp())
    create_demo_keys(keys, ["gateway"], ("gost2012-256",))
    signer = demo_signer(keys, "gateway")
    resolved = edition(args.edition)
    region = profile(EDITIONS[args.edition][0])
    print(f"edition {args.edition}: H {resolved.h_version}, L {resolved.l_version}, {resolved.profile.title}")
    for n in args.records:
        rs = records(args.edition, n)
        t0 = time.perf_counter()
        reg = build_register(rs, edition=resolved, receiver_code="02001", act_number="B-1", act_date=date(2026, 11, 5))
        t1 = time.perf_counter()
        h, l_file = to_bytes(reg.h_file), to_bytes(reg.l_file)
        archive = RegisterArchive.make(reg, date(2026, 11, 5), signer)
        t2 = time.perf_counter()
        pair = unpack_register(archive.content, archive.file_name)
        found = check_archive(pair, region, specialties={"76", "27", "49", "1122"})
        t3 = time.perf_counter()
        assert all(not p.errors for p in found)
        print(f"{n:>6} records, {len(reg.h_file.findall('ZAP')):>5} ZAP, {len(reg.l_file.findall('PERS')):>5} PERS: "
              f"build+check {t1 - t0:6.2f} s, serialise+zip+sign {t2 - t1:5.2f} s, insurer's ФЛК {t3 - t2:5.2f} s; "
              f"H {len(h) / 1e6:5.2f} MB, L {len(l_file) / 1e6:5.2f} MB, ZIP {len(archive.content) / 1e6:5.2f} MB, "
              f".sig {len(archive.signature)} B")


if __name__ == "__main__":
    main()
