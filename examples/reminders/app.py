"""Alarms: an inbox per user that delivers a reminder when it comes due.

POST /inboxes/<name>/remind   {"in_ms": 1500, "text": "stand up"}
GET  /inboxes/<name>          pending reminders, the alarm's time and what was delivered

One alarm per instance: the inbox keeps its reminders ordered by time and sets the alarm for
the earliest. Alarms are durable and at-least-once, so delivery is made idempotent by keying
each reminder by its id.
"""

import time

from fastactor import AlarmInfo, Request, Response, StatefulActor


class Inbox(StatefulActor):
    async def remind(self, in_ms: int, text: str) -> dict:
        s = self.ctx.storage
        seq = (await s.get("seq") or 0) + 1
        due = int(time.time() * 1000) + in_ms
        await s.put("seq", seq)
        await s.put(f"pending/{due:015d}/{seq:09d}", text)
        current = await s.get_alarm()
        if current is None or due < current:
            await s.set_alarm(due)
        return {"id": seq, "due": due}

    async def alarm(self, info: AlarmInfo) -> None:
        s = self.ctx.storage
        now = int(time.time() * 1000)
        pending = await s.list(prefix="pending/", limit=1000)
        for key, text in pending.items():
            due, seq = (int(x) for x in key.split("/")[1:])
            if due > now:
                await s.set_alarm(due)  # the next one; keys are ordered by time
                return
            await s.put(f"delivered/{seq:09d}", {"text": text, "due": due, "at": now})
            await s.delete(key)

    async def show(self) -> dict:
        s = self.ctx.storage
        return {
            "alarm": await s.get_alarm(),
            "pending": len(await s.list(prefix="pending/", limit=1000)),
            "delivered": list((await s.list(prefix="delivered/", limit=1000)).values()),
        }


async def fetch(request: Request, env) -> Response:
    parts = request.path.strip("/").split("/")
    if len(parts) < 2 or parts[0] != "inboxes" or not parts[1]:
        return Response.json({"error": "not found"}, status=404)
    inbox = env.INBOX.id_from_name(parts[1])
    if len(parts) == 2 and request.method == "GET":
        return Response.json(await inbox.show())
    if parts[2:] == ["remind"] and request.method == "POST":
        try:
            body = await request.json()
            in_ms, text = body["in_ms"], body["text"]
        except (ValueError, KeyError, TypeError):
            return Response.json(
                {"error": 'expected a JSON body {"in_ms": <int>, "text": <str>}'}, status=400
            )
        if type(in_ms) is not int or not 0 <= in_ms <= 10 * 365 * 86_400_000:
            return Response.json({"error": "in_ms must be an int, 0 to 10 years"}, status=400)
        if type(text) is not str:
            return Response.json({"error": "text must be a string"}, status=400)
        return Response.json(await inbox.remind(in_ms, text))
    return Response.json({"error": "not found"}, status=404)
