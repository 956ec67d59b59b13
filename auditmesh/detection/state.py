"""Correlation and suppression state in Redis, shared by every processor, one script call per batch.

    am:d:c:{rule}|{group}   event_count / value_count: sorted set, member -> newest occurred_at ms
                            (event ids, so a resent event counts once; values, so a value counts once)
                            temporal: hash, rule index -> newest occurred_at ms
    am:d:s:{rule}|{group}   the open alert of a suppressed rule's group: id, created (ms), count;
                            expires with the suppression window
    am:d:e:{rule}|{group}   the ids of the events the open alert has counted (a set, same expiry)

The window of a correlation is measured in event time: after adding a batch, members older than
the newest member minus the timespan are dropped (under a ``gte``/``gt`` condition only once the
untrimmed count reaches the threshold: trimming cannot make a count that falls short hold, and
skipping it saves two of a group's commands in the common case). When the condition holds and the group has no
open alert, a new alert opens (its count is the correlation's value: events or distinct values);
while one is open, every matching event not counted before adds to its count (a resent batch
does not). A rule without a suppression window
raises a new alert each time its condition holds and starts its window afresh.

State lives in Redis only, so it is right however events are spread over processors and outlives
any of them.

Running counts go out once a second per alert, not once per processor that counted it: before
publishing, a processor claims each update (:meth:`CorrelationState.claim_updates`). The open
alert's hash keeps the last count claimed (``pc``) and when (``pat``, Redis's clock); a claim is
granted when the count is above ``pc`` and the last claim is about a second old, and records
both. A count already claimed is dropped; a newer one claimed too soon is kept by the caller for
its next flush, so the last count of an attack still goes out, whichever processor counted it. A
claim whose publication failed (or was cancelled at shutdown) is owed by its processor, which
sends it at its next flush unless the count has moved on (and so is another processor's to send).

A call whose answer is lost (a timeout under load, a dropped connection) may or may not have run,
so the caller retries it with the same :class:`Round`, and the script makes a second run of a
round a no-op: windows hold event ids, values and newest times (adding them twice changes
nothing), an open alert counts distinct event ids, and the alert ids are chosen once per round,
so a retried round that finds the alert it opened itself still reports it as new. A correlation
without a suppression window that fired leaves a short marker (``am:d:f:{alert id}``) so that its
retry reports the same firing instead of starting the window afresh a second time. A round that
still fails after the caller's last try is counted; its correlations are lost, never its events.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis

from auditmesh.detection.evaluator import Update
from auditmesh.detection.rules import Correlation

__all__ = ["CLAIMED", "CLOSED", "LATER", "SENT", "CorrelationState", "Firing", "Round"]

_STATE_LUA = """
local payload = cjson.decode(ARGV[1])
local rules, items = payload.r, payload.i
local now = tonumber(ARGV[2])
local out = {}
local function holds(v, op, thr)
  if op == 'gte' then return v >= thr elseif op == 'gt' then return v > thr
  elseif op == 'lte' then return v <= thr elseif op == 'lt' then return v < thr
  elseif op == 'eq' then return v == thr else return v ~= thr end
end
local function sadd(key, members)
  local added = 0
  for j = 1, #members, 500 do
    added = added + redis.call('SADD', key, unpack(members, j, math.min(j + 499, #members)))
  end
  return added
end
local function ids_of(it)
  -- event_count sends its members (event ids) only: they are the ids it counted
  if it.ids then return it.ids end
  local ids = {}
  for q = 1, #it.m, 2 do ids[#ids + 1] = it.m[q] end
  return ids
end
for i, it in ipairs(items) do
  local rule = rules[it.r + 1]
  it.t, it.sms, it.span, it.op, it.thr, it.n = rule.t, rule.sms, rule.span, rule.op, rule.thr, rule.n
  local fired = nil
  if it.sms == 0 and it.t ~= 'suppress' then fired = redis.call('GET', 'am:d:f:' .. it.aid) end
  if fired then
    out[i] = {1, 1, it.aid, tonumber(fired), now}
  else
    local ok = true
    local cur = it.c
    local ck = 'am:d:c:' .. it.k
    local sk = 'am:d:s:' .. it.k
    local ek = 'am:d:e:' .. it.k
    if it.t == 'event_count' or it.t == 'value_count' then
      local m = it.m
      local j = 1
      while j < #m do
        local args = {}
        local last = math.min(j + 398, #m - 1)
        for q = j, last, 2 do
          args[#args + 1] = m[q + 1]
          args[#args + 1] = m[q]
        end
        redis.call('ZADD', ck, 'GT', unpack(args))
        j = last + 2
      end
      cur = redis.call('ZCARD', ck)
      -- A window trimmed holds no more than untrimmed: under a gte/gt threshold it is trimmed
      -- only once the untrimmed count reaches it (so it stays near the threshold in size).
      if (it.op ~= 'gte' and it.op ~= 'gt') or holds(cur, it.op, it.thr) then
        local top = redis.call('ZREVRANGE', ck, 0, 0, 'WITHSCORES')
        redis.call('ZREMRANGEBYSCORE', ck, '-inf', '(' .. (tonumber(top[2]) - it.span))
        cur = redis.call('ZCARD', ck)
      end
      redis.call('PEXPIRE', ck, it.span + 60000)
      ok = holds(cur, it.op, it.thr)
    elseif it.t == 'temporal' or it.t == 'temporal_ordered' then
      local m = it.m
      for j = 1, #m, 2 do
        local old = tonumber(redis.call('HGET', ck, m[j]) or '-1')
        if m[j + 1] > old then redis.call('HSET', ck, m[j], m[j + 1]) end
      end
      redis.call('PEXPIRE', ck, it.span + 60000)
      local lo, hi, prev = nil, nil, nil
      for r = 0, it.n - 1 do
        local v = redis.call('HGET', ck, tostring(r))
        if not v then ok = false break end
        v = tonumber(v)
        if it.t == 'temporal_ordered' and prev ~= nil and v < prev then ok = false break end
        prev = v
        if lo == nil or v < lo then lo = v end
        if hi == nil or v > hi then hi = v end
      end
      if ok and hi - lo > it.span then ok = false end
      cur = it.n
    end
    if it.sms == 0 then
      if ok then
        redis.call('DEL', ck)
        if it.t ~= 'suppress' then redis.call('SET', 'am:d:f:' .. it.aid, cur, 'PX', 600000) end
        out[i] = {1, 1, it.aid, cur, now}
      else
        out[i] = {0}
      end
    elseif redis.call('EXISTS', sk) == 1 then
      local added = sadd(ek, ids_of(it))
      local count = redis.call('HINCRBY', sk, 'count', added)
      redis.call('PEXPIRE', ek, redis.call('PTTL', sk))
      local id = redis.call('HGET', sk, 'id')
      out[i] = {1, id == it.aid and 1 or 0, id, count, tonumber(redis.call('HGET', sk, 'created'))}
    elseif ok then
      redis.call('DEL', ek)
      if it.t == 'event_count' then
        sadd(ek, redis.call('ZRANGE', ck, 0, -1))
      end
      sadd(ek, ids_of(it))
      local t = redis.call('TIME')
      local pat = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      redis.call('HSET', sk, 'id', it.aid, 'created', now, 'count', cur, 'pc', cur, 'pat', pat)
      redis.call('PEXPIRE', sk, it.sms)
      redis.call('PEXPIRE', ek, it.sms)
      out[i] = {1, 1, it.aid, cur, now}
    else
      out[i] = {0}
    end
  end
end
return out
"""


_CLAIM_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local every = tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV, 2 do
  local sk = 'am:d:s:' .. ARGV[i]
  local h = redis.call('HMGET', sk, 'id', 'count', 'pc', 'pat')
  if h[1] ~= ARGV[i + 1] or not h[2] then
    out[#out + 1] = {-1, 0}
  else
    local count, pc, pat = tonumber(h[2]), tonumber(h[3] or '0'), tonumber(h[4] or '0')
    if count <= pc then
      out[#out + 1] = {0, count}
    elseif now - pat < every then
      out[#out + 1] = {2, count}
    else
      redis.call('HSET', sk, 'pc', count, 'pat', now)
      out[#out + 1] = {1, count}
    end
  end
end
return out
"""

CLAIMED, SENT, LATER, CLOSED = 1, 0, 2, -1
"""Answers of a claim: publish now; this count (or a higher one) is out already; claimed too soon
after the last publication (try at the next flush); the alert is no longer its group's open one."""


@dataclass
class Firing:
    """An update whose group raised a new alert or added to its open one."""

    update: Update
    alert_id: str
    new: bool
    count: int
    created_ms: int


@dataclass(frozen=True)
class Round:
    """A batch's updates as one script call, alert ids chosen: what a retry sends again."""

    updates: list[Update]
    payload: str


class CorrelationState:
    """Applies a batch's updates to the shared state in one script call."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._script = client.register_script(_STATE_LUA)
        self._claim = client.register_script(_CLAIM_LUA)

    @staticmethod
    def prepare(updates: list[Update]) -> Round:
        """The round's payload: each rule's constants once, each group's members, and the alert ids
        chosen now (one random base per round, the group's index after it: 32 hex digits)."""
        rules: list[dict[str, object]] = []
        rule_index: dict[str, int] = {}
        items = []
        base = uuid.uuid4().hex[:24]
        for i, u in enumerate(updates):
            rule = u.rule
            r = rule_index.get(rule.name)
            if r is None:
                r = rule_index[rule.name] = len(rules)
                if isinstance(rule, Correlation):
                    constants: dict[str, object] = {
                        "t": rule.kind,
                        "span": rule.timespan_ms,
                        "op": rule.op,
                        "thr": rule.threshold,
                        "n": len(rule.rules),
                    }
                else:
                    constants = {"t": "suppress"}
                constants["sms"] = rule.suppression_ms
                rules.append(constants)
            members: list[str | int] = []
            for member, ms in u.members.items():
                members += [member, ms]
            item: dict[str, object] = {"r": r, "k": u.key, "c": u.matches, "m": members, "aid": f"{base}{i:08x}"}
            if not (isinstance(rule, Correlation) and rule.kind == "event_count"):
                item["ids"] = u.ids  # event_count's members are its event ids
            items.append(item)
        return Round(updates, json.dumps({"r": rules, "i": items}))

    async def refresh_counts(self, firings: list[Firing]) -> None:
        """Raise each firing's count to its open alert's count in Redis now, in one round trip; a
        firing whose alert is no longer the open one of its group (or has expired) keeps its count."""
        async with self._client.pipeline(transaction=False) as pipe:
            for firing in firings:
                pipe.hmget("am:d:s:" + firing.update.key, "id", "count")
            answers = await pipe.execute()
        for firing, (alert_id, count) in zip(firings, answers, strict=True):
            if alert_id is not None and alert_id.decode() == firing.alert_id and count is not None:
                firing.count = max(firing.count, int(count))

    async def claim_updates(self, firings: list[Firing], every_ms: int) -> list[int]:
        """One answer per firing (:data:`CLAIMED`, :data:`SENT`, :data:`LATER` or :data:`CLOSED`), in
        one script call; each firing's count is raised to its open alert's count in Redis now. Times
        are Redis's clock (``TIME``), so processors' clocks need not agree."""
        args: list[str | int] = [every_ms]
        for firing in firings:
            args += [firing.update.key, firing.alert_id]
        answers = await self._claim(args=args)
        verdicts: list[int] = []
        for firing, (verdict, count) in zip(firings, answers, strict=True):
            if verdict != CLOSED:
                firing.count = max(firing.count, int(count))
            verdicts.append(int(verdict))
        return verdicts

    async def apply(self, updates: list[Update] | Round, now_ms: int) -> list[Firing]:
        """One script call for the round (prepared here when given bare updates); safe to repeat
        with the same :class:`Round` when an earlier call's answer was lost."""
        batch = updates if isinstance(updates, Round) else self.prepare(updates)
        if not batch.updates:
            return []
        answers = await self._script(args=[batch.payload, now_ms])
        firings: list[Firing] = []
        for u, answer in zip(batch.updates, answers, strict=True):
            if not answer or int(answer[0]) == 0:
                continue
            alert_id = answer[2].decode() if isinstance(answer[2], bytes) else str(answer[2])
            firings.append(Firing(u, alert_id, bool(int(answer[1])), int(answer[3]), int(answer[4])))
        return firings
