"""Threat detection: Sigma rules over the live event stream, correlation state in Redis, alerts.

- :mod:`.rules`: parse and validate rule files with pySigma, compile them into matchers.
- :mod:`.fields`: the field mapping (Sigma field name -> event field or attribute).
- :mod:`.evaluator`: a batch's matches, aggregated per rule and group (no I/O).
- :mod:`.state`: correlation windows and suppression in Redis, one script call per batch.
- :mod:`.detector`: what a processor runs beside its writes.
- :mod:`.alerts`, :mod:`.feed`, :mod:`.webhook`: storing, streaming and delivering alerts.
"""
