"""A paginated JSON API of synthetic people (``GET /<any path>?page=N``, PER_PAGE people a page): the
way dashboards and APIs hand out a whole table a page at a time. Every person is made up
(sensor.synth); the same page always holds the same people.

Run as ``python -m tests.people_api --port P`` (tests start it with tests.procs-style helpers).
"""
from __future__ import annotations

import argparse
import csv
import io

import orjson
from aiohttp import web

from sensor import synth

PER_PAGE = 5
PEOPLE = 2000
FIELDS = ("permit_id", "last_name", "first_name", "date_of_birth", "street_address", "city", "state", "zip",
          "driver_license")


def people(n: int = PEOPLE) -> list[dict[str, str]]:
    rows = csv.DictReader(io.StringIO(synth.BREACH_HEADER + "".join(synth.breach_rows(n))))
    return [{k: r[k] for k in FIELDS} for r in rows]


def page_body(everyone: list[dict[str, str]], page: int, per_page: int = PER_PAGE) -> bytes:
    chunk = everyone[page * per_page:(page + 1) * per_page]
    return orjson.dumps({"page": page, "per_page": per_page, "total": len(everyone), "people": chunk})


def app() -> web.Application:
    everyone = people()

    async def listing(request: web.Request) -> web.Response:
        try:
            page = int(request.query.get("page", "0"))
        except ValueError:
            raise web.HTTPBadRequest() from None
        return web.Response(body=page_body(everyone, page), content_type="application/json")

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    a = web.Application()
    a.add_routes([web.get("/healthz", health), web.get("/{tail:.*}", listing)])
    return a


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    web.run_app(app(), host="127.0.0.1", port=ap.parse_args().port, print=None)


if __name__ == "__main__":
    main()
