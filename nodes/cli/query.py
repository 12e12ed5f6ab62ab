"""``psi query``: civil affairs asks one node's dataset about a file of identifiers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nodes.cli.inputs import encoding_option, lang_option, read_id_file
from nodes.cli.output import STDOUT, status_stream, writing
from nodes.client import matches
from nodes.client.client import Client, DatasetNotOffered, NodeError
from nodes.shared.config import load_federation
from nodes.shared.i18n import translations
from nodes.shared.progress import progress
from psi.errors import InputError, Source
from psi.ids import Canonical

EXIT_NO_MATCHES = 1  # distinct from a failure (2 for a user mistake, 3 for a node failure)
EXIT_NODE_FAILED = 3


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "query",
        help="query a node's dataset about a file of identity numbers",
        description="Exit status: 0 matches found, 1 no matches, 2 bad input (an unknown "
        "dataset, a file without one valid identifier), 3 node failure.",
    )
    parser.add_argument("--federation", type=Path, required=True, help="federation.toml")
    parser.add_argument("--node", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--ids", type=Path, required=True, help="CSV file of identity numbers")
    parser.add_argument("--column", default="id_number", help="column of --ids (default id_number)")
    parser.add_argument("--purpose", required=True, help="purpose code granted by the node")
    parser.add_argument("--legal-basis", default="", help="reference recorded with the query")
    parser.add_argument(
        "--out", type=Path, required=True, help=f"matches to write ({STDOUT} for standard output)"
    )
    parser.add_argument("--json", action="store_true", help="write the matches as JSON, not CSV")
    parser.add_argument(
        "--rejects", type=Path, help="invalid identifiers, masked (default: beside --out)"
    )
    encoding_option(parser, "--ids")
    lang_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    federation = load_federation(args.federation)
    column, _ = read_id_file(args.ids, args.column, args.out, args.rejects, encoding=args.encoding)
    ids = Canonical(sorted({x.decode() for x in column.ids[column.valid].tolist()}))
    if not ids:
        raise InputError(
            f"no valid identifier in column {args.column!r}: nothing to ask", Source(str(args.ids))
        )
    with Client(federation) as client, progress(len(ids), f"{args.node}/{args.dataset}") as bar:
        try:
            result = client.query(
                args.node,
                args.dataset,
                ids,
                purpose=args.purpose,
                legal_basis_ref=args.legal_basis,
                progress=bar,
            )
        except DatasetNotOffered as exc:
            raise InputError(str(exc)) from None
        except NodeError as exc:
            print(f"psi query: node failed: {exc}", file=sys.stderr)
            return EXIT_NODE_FAILED
    with writing(args.out) as handle:
        rows = (matches.write_json if args.json else matches.write_csv)(handle, [result])
    said = translations(args.lang).gettext(
        "{matched} of {asked} identifiers matched ({rows} records) in {node}/{dataset}, epoch "
        "{epoch}, table version {version}; {evaluated} evaluated, {cached} from cache; written "
        "to {out}"
    )
    print(
        said.format(
            matched=len(result.matches), asked=len(ids), rows=rows, node=args.node,
            dataset=args.dataset, epoch=result.epoch, version=result.table_version,
            evaluated=result.evaluated, cached=len(ids) - result.evaluated, out=args.out,
        ),
        file=status_stream(args.out),
    )  # fmt: skip
    return 0 if result.matches else EXIT_NO_MATCHES
