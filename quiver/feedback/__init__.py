"""Inbound feedback reports (ARF): parse (`arf`), authenticate (`dkim_check`), decide
whether a report may act (`trust`). Pure functions over bytes and policy; the FBL
intake handler composes them. Import the modules directly: this package imports
nothing, so `quiver.policy` can share its vocabulary without a cycle."""
