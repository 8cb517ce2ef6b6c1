"""Hypothesis strategies for networks that reach into special address ranges."""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st


@st.composite
def overlapping(draw: st.DrawFn, ranges: list[str]) -> tuple[str, ipaddress.IPv4Network
                                                                | ipaddress.IPv6Network]:
    """A network sharing addresses with one of `ranges`: a part of it (any prefix,
    anywhere inside) or a network containing it. Returns (network text, the range)."""
    special = ipaddress.ip_network(draw(st.sampled_from(ranges)))
    if draw(st.booleans()):
        prefix = draw(st.integers(special.prefixlen, special.max_prefixlen))
        offset = draw(st.integers(0, special.num_addresses - 1))
        net = ipaddress.ip_network((int(special.network_address) + offset, prefix), strict=False)
    else:
        net = special.supernet(new_prefix=draw(st.integers(0, special.prefixlen)))
    return str(net), special
