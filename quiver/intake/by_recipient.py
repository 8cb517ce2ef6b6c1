"""What arrives under the inbound bucket's bounce prefix: bounces to signed return
paths, and unsubscribe requests to the mailto addresses (cdk/inbound_mail.py gives
each mailto address a receipt rule storing there, so the bounce Lambda reads both).

SES's own Received field names the envelope recipient (InboundMail.envelope); mail
to a mailto address goes to the mailto intake, the rest to the bounce intake. Mail
whose recipient SES did not record (one transaction to several addresses) is read
as a bounce, which a request is not: it is ignored there, and counted.
"""

from __future__ import annotations

from quiver.intake.bounce import BounceIntake
from quiver.intake.counts import Kind, Outcome
from quiver.intake.mail import InboundMail
from quiver.intake.unsubscribe import MailtoIntake


class ByRecipient:
    kind: Kind = "bounce"

    def __init__(self, *, bounce: BounceIntake, mailto: MailtoIntake) -> None:
        self.bounce = bounce
        self.mailto = mailto
        # Objects are bounded by the bounce parser's bound; the mailto intake reads
        # only the header block, itself bounded.
        self.max_bytes = bounce.max_bytes

    async def process(self, mail: InboundMail) -> Outcome:
        if self.mailto.addressed(mail):
            return await self.mailto.process(mail)
        return await self.bounce.process(mail)
