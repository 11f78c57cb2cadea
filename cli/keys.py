"""`amft keys create --tenant NAME | list | revoke ID`: API key management.

Works directly on the database of the current settings (AMFT_DATABASE_URL or the embedded
default), so it needs no running server. A key is printed once and never stored.
"""

from __future__ import annotations

import sys


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("keys", help="Create, list and revoke API keys.")
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="Create a key for a tenant (created if new); prints it once.")
    create.add_argument("--tenant", required=True, help="Tenant name, e.g. your team.")
    actions.add_parser("list", help="List keys (prefix, tenant, revoked).")
    revoke = actions.add_parser("revoke", help="Revoke a key by id or by its listed prefix.")
    revoke.add_argument("key_id", help="Key id or prefix from `amft keys list`.")
    parser.set_defaults(run=run)


def run(args) -> int:
    from service.auth import create_key, list_keys, revoke_key
    from service.db import get_database, migrate
    from service.errors import NotFound
    from service.settings import get_settings

    url = get_settings().resolved_database_url
    migrate(url)
    db = get_database(url)
    if args.action == "create":
        if not 1 <= len(args.tenant) <= 64:
            sys.exit("amft keys: --tenant must be 1-64 characters")
        key, row = create_key(db, args.tenant)
        print(key)
        print(f"(key id {row.id} for tenant {args.tenant!r}; shown once, store it now)", file=sys.stderr)
    elif args.action == "list":
        for key_id, prefix, tenant, revoked in list_keys(db):
            print(f"{key_id}  {prefix}...  {tenant}  {'revoked' if revoked else 'active'}")
    else:
        try:
            revoke_key(db, args.key_id)
        except NotFound as error:
            sys.exit(f"amft keys: {error}")
        print(f"revoked {args.key_id}")
    return 0
