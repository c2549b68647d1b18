"""The usage ledger: one row per authenticated request, durable, idempotent, queryable with SQL.

* :mod:`~gateway.ledger.rows` builds a row from a :class:`~gateway.record.RequestRecord`;
* :mod:`~gateway.ledger.writer` spools it locally on the request path and batches it into the
  database (:mod:`~gateway.ledger.spool` is the durable local file format,
  :mod:`~gateway.ledger.inserts` the idempotent batch insert and roll-up);
* :mod:`~gateway.ledger.queries` answers spend reports from the daily roll-up;
* :mod:`~gateway.ledger.models` declares the tables (migration 0002 adds the SQL views).

SQLAlchemy is used here and in ``gateway.db`` only.
"""
