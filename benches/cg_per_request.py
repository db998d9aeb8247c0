#!/usr/bin/env python3
"""Instructions per request for each function, from the two profiles that
`CG_OUT=file bash benches/instructions.sh` keeps (file and file.short):
(cost in the long run - cost in the short run) / (N2 - N1), so start-up and
shutdown cancel out as they do for the total.

    python3 benches/cg_per_request.py FILE N2-N1 [--inclusive] [TOP] [FILTER]
    python3 benches/cg_per_request.py /tmp/cg.out 1500 --inclusive 40 pingora_core::connectors
"""
import re
import subprocess
import sys


def costs(path, inclusive):
    args = ["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}", "--threshold=100", path]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    table = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([ \d.]+%\)\s+(.*)$", line)
        if m and "PROGRAM TOTALS" not in line:
            name = re.sub(r" \[[^\]]*\]$", "", m.group(2))
            table[name] = table.get(name, 0) + int(m.group(1).replace(",", ""))
    return table


def main():
    path, requests = sys.argv[1], int(sys.argv[2])
    rest = sys.argv[3:]
    inclusive = "--inclusive" in rest
    rest = [a for a in rest if a != "--inclusive"]
    top = int(rest[0]) if rest else 40
    pattern = rest[1] if len(rest) > 1 else ""
    long_run, short_run = costs(path, inclusive), costs(path + ".short", inclusive)
    rows = []
    for name, cost in long_run.items():
        per = (cost - short_run.get(name, 0)) / requests
        if pattern in name and abs(per) >= 1:
            rows.append((per, name))
    for per, name in sorted(rows, reverse=True)[:top]:
        print(f"{per:10,.0f}  {name[:150]}")


main()
