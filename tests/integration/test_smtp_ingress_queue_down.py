"""The SMTP listener when SQS is unreachable: 451 4.3.0, and the client's retry is
the one copy on the queue (nothing lost, nothing half-enqueued)."""

from __future__ import annotations

import smtplib
from urllib.parse import urlsplit

import pytest
from smtp_ingress_rig import ingress_rig

from quiver.devstack import moto_server
from quiver.ingress.smtp_server import AllowedNetwork

pytestmark = pytest.mark.integration

MESSAGE = (b"From: ann@news.quiver-demo.test\r\nTo: bob@example.com\r\n"
           b"Subject: while the queue is down\r\n\r\nbody\r\n")


def test_queue_down_is_451_and_the_retry_is_the_only_copy(tmp_path) -> None:
    with ingress_rig(tmp_path) as rig:
        listener = rig.listen(allowed=(AllowedNetwork.parse("127.0.0.0/8"),))
        with smtplib.SMTP(*listener.address, timeout=120) as smtp:
            smtp.sendmail("ann@news.quiver-demo.test", ["bob@example.com"], MESSAGE)
        assert len(rig.queued()) == 1
        port = urlsplit(rig.moto.endpoint).port
        rig.moto.stop()
        with smtplib.SMTP(*listener.address, timeout=120) as smtp:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                smtp.sendmail("ann@news.quiver-demo.test", ["bob@example.com"], MESSAGE)
            assert refused.value.smtp_code == 451
            assert refused.value.smtp_error.startswith(b"4.3.0 message not queued")
            # The session survives a failed enqueue.
            assert smtp.noop()[0] == 250
        # The queue is back (empty, as moto keeps nothing): the client's retry lands once.
        assert port is not None
        rig.moto = moto_server.start_moto(log_dir=tmp_path / "logs", port=port)
        moto_server.create_resources(rig.moto.endpoint)
        with smtplib.SMTP(*listener.address, timeout=120) as smtp:
            smtp.sendmail("ann@news.quiver-demo.test", ["bob@example.com"], MESSAGE)
        [queued] = rig.queued()
        assert queued.raw == MESSAGE
        spill = moto_server.client(rig.moto.endpoint, "s3").list_objects_v2(
            Bucket=rig.deployment.spill_bucket)
        assert spill.get("KeyCount", 0) == 0
        assert listener.counts.replies_4xx == 1
