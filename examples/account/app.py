"""The quick start: accounts you can deposit into and debit, one actor per account.

POST /accounts/<name>/deposit   {"amount": 100}
POST /accounts/<name>/debit     {"amount": 30}
GET  /accounts/<name>                (and HEAD; another method is a 405)
GET  /health
"""

from urllib.parse import unquote

from fastactor import Request, Response, StatefulActor


class Account(StatefulActor):
    async def deposit(self, amount: int) -> dict:
        balance = (await self.ctx.storage.get("balance") or 0) + amount
        await self.ctx.storage.put("balance", balance)
        return {"ok": True, "balance": balance}

    async def debit(self, amount: int) -> dict:
        balance = await self.ctx.storage.get("balance") or 0
        if balance < amount:
            return {"ok": False, "balance": balance}
        await self.ctx.storage.put("balance", balance - amount)
        return {"ok": True, "balance": balance - amount}

    async def balance(self) -> dict:
        return {"balance": await self.ctx.storage.get("balance") or 0}


async def fetch(request: Request, env) -> Response:
    parts = request.path.strip("/").split("/")
    if parts == ["health"]:
        return Response.json({"ok": True})
    if len(parts) < 2 or parts[0] != "accounts" or not parts[1]:
        return Response.json({"error": "not found"}, status=404)
    try:
        # The path keeps the %-escapes the client sent (/accounts/zo%C3%AB is "zoë").
        name = unquote(parts[1], errors="strict")
    except UnicodeDecodeError:
        return Response.json({"error": "the account name is not UTF-8"}, status=400)
    try:
        account = env.ACCOUNT.id_from_name(name)
    except ValueError as e:  # a name longer than 2048 UTF-8 bytes
        return Response.json({"error": str(e)[:200]}, status=400)
    if len(parts) == 2:
        if request.method not in ("GET", "HEAD"):  # HEAD: the same answer, sent without a body
            return _not_allowed("GET, HEAD")
        return Response.json({"account": account.id, **await account.balance()})
    if len(parts) == 3 and parts[2] in ("deposit", "debit"):
        if request.method != "POST":
            return _not_allowed("POST")
        try:
            amount = (await request.json())["amount"]
        except (ValueError, KeyError, TypeError):
            return Response.json({"error": 'expected a JSON body {"amount": <int>}'}, status=400)
        if type(amount) is not int or amount < 0:
            return Response.json({"error": "amount must be a non-negative integer"}, status=400)
        result = await getattr(account, parts[2])(amount)
        return Response.json({"account": account.id, **result})
    return Response.json({"error": "not found"}, status=404)


def _not_allowed(allow: str) -> Response:
    return Response.json({"error": f"method not allowed: {allow}"}, 405, {"allow": allow})
