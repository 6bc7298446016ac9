"""wiretask on RabbitMQ without publisher confirms (``?confirm_publish=false``): a publish
returns once its bytes are written, the promise Celery's and Dramatiq's defaults make.
Not wiretask's default; shown beside it so that the cost of the confirms is seen.

Worker: ``wiretask worker -A _peers.lib_wiretask_amqp_unconfirmed:app -Q wiretask-nc``.
"""

from __future__ import annotations

from _peers.lib_wiretask_amqp import build

app, small, Client = build("wiretask-nc", "?confirm_publish=false")
