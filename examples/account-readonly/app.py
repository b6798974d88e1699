"""Read-only view of the accounts: GET /<name> -> {"account": ..., "balance": ...}."""

from urllib.parse import unquote

from fastactor import Request, Response


async def fetch(request: Request, env) -> Response:
    name = request.path.strip("/")
    if not name or "/" in name:
        return Response.json({"error": "not found"}, status=404)
    if request.method not in ("GET", "HEAD"):  # HEAD: the same answer, sent without a body
        return Response.json(
            {"error": "method not allowed: GET, HEAD"}, 405, {"allow": "GET, HEAD"}
        )
    try:
        name = unquote(name, errors="strict")  # the path keeps the client's %-escapes
    except UnicodeDecodeError:
        return Response.json({"error": "the account name is not UTF-8"}, status=400)
    try:
        account = env.ACCOUNT.id_from_name(name)
    except ValueError as e:  # a name longer than 2048 UTF-8 bytes
        return Response.json({"error": str(e)[:200]}, status=400)
    return Response.json({"account": account.id, **await account.balance(), "view": True})
