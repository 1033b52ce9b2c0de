"""Systems of any size and routes through them (docs/system.md section 1, docs/multichip.md "Routes").

* `system_for_chips(n)`: the smallest published topology holding n chips: an n-chip node (n <= 8), a dragonfly of
  ceil(n / 8) nodes up to the 72-chip rack (9 nodes: topology `rack`), and beyond one rack R = ceil(n / 72) racks
  (at most 145, 10,440 chips) as an explicit `links` topology (`rack_links`, the chosen layout below).
* `pipeline_route(system, n)`: n chips, consecutive ones directly linked, filling a node (8 chips, local links)
  before moving to the next over one global link, and a rack before moving to the next rack.
* `sub_system(system, route)`: the route's chips renumbered 0..n-1 in route order with every link among them
  (kind and latency class kept): the system a pipeline of n stages is compiled and simulated on.

**Chosen multi-rack layout** (the published facts, docs/tsp-facts.md section 3: 8 chips per node fully connected
by 7 local links, 4 global links per chip, 32 global ports per node, 9 nodes a rack, up to 145 racks at most 5 hops):
each node gives 16 of its 32 global ports to the other 8 nodes of its rack (2 links per node pair: chip j of node
n and chip n' of node m, links 8 and 9, where j and n' are m's and n's positions among the other nodes), and 16 to
other racks (links 10 and 11 of every chip). A rack then has 9 x 16 = 144 inter-rack ports: one to each of up to
144 other racks, hence 145 racks. With R racks each rack pair gets floor(144 / (R - 1)) links: rack r's ports
toward its s-th other rack (other racks in index order) are s * per_pair .. + per_pair, inter-rack port q being on
node q mod 9 (so a rack pair's links are spread over the nodes), chip (q div 9) div 2, link 10 + (q div 9) mod 2.
A single rack keeps the Rust `rack` layout (4 global links per node pair, all 32 ports in the rack). The layout
does not reproduce the published "at most 5 hops" for every chip pair at 145 racks (docs/system.md section 1).
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any

from lpusim.errors import CompileError
from lpusim.system import System

NODE_CHIPS = 8
RACK_NODES = 9
RACK_CHIPS = NODE_CHIPS * RACK_NODES  # 72
MAX_RACKS = 145                      # 9 x 16 = 144 inter-rack ports per rack: one to each other rack
MAX_CHIPS = MAX_RACKS * RACK_CHIPS   # 10,440
INTER_RACK_PORTS = RACK_NODES * 16   # per rack


def rack_links(racks: int) -> list[dict[str, Any]]:
    """Every link of `racks` racks of 72 chips (chip = 72 * rack + 8 * node + c) in the chosen layout above, as a
    `links` topology list (local links kind `local`, intra- and inter-rack global links kind `global`)."""
    if not 1 <= racks <= MAX_RACKS:
        raise CompileError(f"{racks} racks: the published topology reaches at most {MAX_RACKS} racks "
                           f"({MAX_CHIPS:,} chips)")
    links: list[dict[str, Any]] = []
    for r in range(racks):
        for n in range(RACK_NODES):
            base = r * RACK_CHIPS + n * NODE_CHIPS
            for a in range(NODE_CHIPS):  # the node's full mesh, numbered as in the Rust `node` topology
                for b in range(a + 1, NODE_CHIPS):
                    links.append({"chip_a": base + a, "link_a": b - 1, "chip_b": base + b, "link_b": a,
                                  "kind": "local"})
        for n in range(RACK_NODES):  # 2 global links per node pair of the rack
            for m in range(n + 1, RACK_NODES):
                ca = r * RACK_CHIPS + n * NODE_CHIPS + (m - 1)  # m is n's (m-1)-th other node
                cb = r * RACK_CHIPS + m * NODE_CHIPS + n        # n is m's n-th other node
                for g in range(2):
                    links.append({"chip_a": ca, "link_a": 8 + g, "chip_b": cb, "link_b": 8 + g, "kind": "global"})
    if racks > 1:
        per_pair = INTER_RACK_PORTS // (racks - 1)

        def port(r: int, other: int, k: int) -> tuple[int, int]:
            s = other if other < r else other - 1
            q = s * per_pair + k
            node, slot = q % RACK_NODES, q // RACK_NODES
            return r * RACK_CHIPS + node * NODE_CHIPS + slot // 2, 10 + slot % 2

        for r in range(racks):
            for m in range(r + 1, racks):
                for k in range(per_pair):
                    (ca, la), (cb, lb) = port(r, m, k), port(m, r, k)
                    links.append({"chip_a": ca, "link_a": la, "chip_b": cb, "link_b": lb, "kind": "global"})
    return links


def system_config(n: int, chip: Any = None, seed: int = 0, **overrides: Any) -> dict[str, Any]:
    """The configuration `system_for_chips` loads (docs/system.md section 1)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise CompileError(f"chips={n!r}: a system needs a whole number of chips, at least 1")
    if n > MAX_CHIPS:
        raise CompileError(f"chips={n:,}: the published topology reaches at most {MAX_RACKS} racks of "
                           f"{RACK_CHIPS} chips ({MAX_CHIPS:,} chips)")
    config: dict[str, Any] = {"seed": seed}
    if chip is not None:
        config["chip"] = chip
    if n <= NODE_CHIPS:
        config.update(topology="node", chips=n)
    elif n <= RACK_CHIPS:
        nodes = math.ceil(n / NODE_CHIPS)
        config.update(topology="rack") if nodes == RACK_NODES else config.update(topology="dragonfly", nodes=nodes)
    else:
        racks = math.ceil(n / RACK_CHIPS)
        config.update(topology="links", chips=racks * RACK_CHIPS, links=rack_links(racks))
    config.update(overrides)
    return config


def system_for_chips(n: int, chip: Any = None, seed: int = 0, **overrides: Any) -> System:
    """The smallest published topology holding n chips: a node (n <= 8), a dragonfly of ceil(n / 8) nodes (the
    `rack` at 9 nodes), beyond that R racks of 72 chips as an explicit `links` topology (the chosen layout of this
    module's docstring). `chip`: a chip name or configuration; `overrides`: other system fields (drift_ppm, ...)."""
    return System.load(system_config(n, chip, seed, **overrides))


def _adjacency(system: System) -> dict[int, dict[int, list[dict]]]:
    adj: dict[int, dict[int, list[dict]]] = {}
    for lk in system.links:
        a, b = lk["chip_a"], lk["chip_b"]
        adj.setdefault(a, {}).setdefault(b, []).append(lk)
        adj.setdefault(b, {}).setdefault(a, []).append(lk)
    return adj


def shortest_path(system: System, a: int, b: int) -> list[str]:
    """The link kinds of a fewest-hops path from chip a to chip b (breadth first, neighbours in link order)."""
    if a == b:
        return []
    adj = _adjacency(system)
    came: dict[int, tuple[int, str]] = {a: (a, "")}
    todo = deque([a])
    while todo and b not in came:
        c = todo.popleft()
        for nxt, links in adj.get(c, {}).items():
            if nxt not in came:
                came[nxt] = (c, links[0]["kind"])
                todo.append(nxt)
    if b not in came:
        raise CompileError(f"no route from chip {a} to chip {b} in the system")
    kinds = []
    while b != a:
        b, kind = came[b]
        kinds.append(kind)
    return kinds[::-1]


def pipeline_route(system: System, n: int) -> list[int]:
    """n chips of `system`, each directly linked to the next: a node's 8 chips (local links) before the next node
    (one global link per node boundary), a rack's 9 nodes before the next rack, nodes and racks in index order as
    far as the links allow. Nodes are 8 consecutive chips, racks 72; within a node the route enters at the chip
    its link arrives on, visits the others in index order and leaves from the chip linked to the next node.
    Deterministic. Within one node (or a system of at most 8 chips linked in a chain): chips 0..n-1."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise CompileError(f"a route of {n!r} chips: at least 1 is needed")
    if n > system.chips:
        raise CompileError(f"a route of {n} chips: the system has {system.chips}")
    adj = _adjacency(system)
    if all(k + 1 in adj.get(k, {}) for k in range(n - 1)) and n <= NODE_CHIPS:
        return list(range(n))
    total_nodes = math.ceil(system.chips / NODE_CHIPS)
    need = math.ceil(n / NODE_CHIPS)

    def node_chips(node: int) -> list[int]:
        return [c for c in range(node * NODE_CHIPS, min((node + 1) * NODE_CHIPS, system.chips))]

    def rack(node: int) -> int:
        return node // RACK_NODES

    def exits(node: int, entry: int | None, to_rack: int | None = None, to_node: int | None = None):
        """(exit chip of `node`, entry chip of the next node, next node) over global links, exit != entry."""
        out = []
        for c in node_chips(node):
            if c == entry:
                continue
            for p in sorted(adj.get(c, {})):
                m = p // NODE_CHIPS
                if m == node or (to_node is not None and m != to_node) or (to_rack is not None and
                                                                         rack(m) != to_rack):
                    continue
                out.append((c, p, m))
        return out

    # iterative depth-first search over the node sequence (node, entry chip, exit chip), preferring the current
    # rack's unvisited nodes in index order, then the next rack; a rack is left only when the route has used all
    # of its nodes (or no more are needed), and never from its last link to the next rack while nodes remain.
    racks_total = math.ceil(total_nodes / RACK_NODES)
    rack_nodes = {r: [m for m in range(r * RACK_NODES, min((r + 1) * RACK_NODES, total_nodes))]
                  for r in range(racks_total)}

    def candidates(node: int, entry: int | None, visited: set[int], depth: int):
        if depth + 1 >= need:
            return []
        r = rack(node)
        left = [m for m in rack_nodes[r] if m not in visited]
        out = []
        if left:
            nxt_rack = r + 1 if r + 1 < racks_total else None
            for c, p, m in exits(node, entry, to_rack=r):
                if m in visited:
                    continue
                rest = [x for x in left if x != m]
                # keep a way out of the rack: some node still to visit (or m itself, when last) links onward
                if nxt_rack is not None and depth + 1 + len(rest) + 1 < need:
                    holders = rest if rest else [m]
                    if not any(exits(x, None, to_rack=nxt_rack) for x in holders):
                        continue
                out.append((m, c, p))
            out.sort(key=lambda t: (t[0], t[1], t[2]))
        else:
            for c, p, m in exits(node, entry, to_rack=r + 1):
                if m not in visited:
                    out.append((m, c, p))
            out.sort(key=lambda t: (t[0], t[1], t[2]))
        return out

    start_nodes = rack_nodes[0] if total_nodes else []  # node 0 first, unless the rack must be left from it
    path: list[tuple[int, int | None, int | None]] = []  # (node, entry chip, exit chip)
    for first in start_nodes:
        stack = [(first, None, iter(candidates(first, None, {first}, 0)))]
        visited = {first}
        chosen: list[tuple[int, int]] = []  # per step: (exit chip, next entry chip)
        steps = 0
        while stack:
            steps += 1
            if steps > 200_000:
                break
            if len(stack) == need:
                break
            node, entry, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                visited.discard(node)
                if chosen:
                    chosen.pop()
                continue
            m, c, p = nxt
            visited.add(m)
            chosen.append((c, p))
            stack.append((m, p, iter(candidates(m, p, visited, len(stack)))))
        if len(stack) == need:
            path = []
            for i, (node, entry, _) in enumerate(stack):
                path.append((node, entry, chosen[i][0] if i < len(chosen) else None))
            break
    if not path:
        raise CompileError(f"no route of {n} chips through the system's {system.chips} chips: its links do not "
                           f"chain {need} nodes of {NODE_CHIPS}")
    route: list[int] = []
    for node, entry, exit_chip in path:
        chips = node_chips(node)
        if entry is None:  # the first node: start at its lowest chip that is not the exit
            entry = next(c for c in chips if c != exit_chip)
        middle = [c for c in chips if c not in (entry, exit_chip)]
        order = [entry] + middle + ([exit_chip] if exit_chip is not None else [])
        route.extend(order[:n - len(route)])
    for a, b in zip(route, route[1:]):
        if b not in adj.get(a, {}):
            raise CompileError(f"no route of {n} chips: chips {a} and {b} of the route are not linked")
    return route


def route_links(system: System, route: list[int]) -> list[dict[str, Any]]:
    """The link each hop of the route takes (the first joining the two chips, as `System.link` finds it)."""
    first: dict[frozenset, dict[str, Any]] = {}
    for lk in system.links:
        first.setdefault(frozenset((lk["chip_a"], lk["chip_b"])), lk)
    out = []
    for a, b in zip(route, route[1:]):
        if frozenset((a, b)) not in first:
            raise CompileError(f"chips {a} and {b} of the route are not linked")
        out.append(first[frozenset((a, b))])
    return out


def sub_system(system: System, route: list[int]) -> System:
    """The route's chips renumbered 0..n-1 in route order (chip k here = route[k] there), with every link of
    `system` among them (its ports, kind and, when the configuration gives them, mean latency and spread): a
    `links` topology with the other fields of `system`'s configuration (seed, drift, latencies). Its random draws
    (drifts, latencies) are its own, not the full system's."""
    index = {c: k for k, c in enumerate(route)}
    if len(index) != len(route):
        raise CompileError("a route visits a chip twice")
    explicit = {}
    for lk in system.config.get("links") or []:
        explicit[frozenset([(lk["chip_a"], lk["link_a"]), (lk["chip_b"], lk["link_b"])])] = lk
    links = []
    for lk in system.links:
        if lk["chip_a"] in index and lk["chip_b"] in index:
            new = {"chip_a": index[lk["chip_a"]], "link_a": lk["link_a"], "chip_b": index[lk["chip_b"]],
                   "link_b": lk["link_b"], "kind": lk.get("kind", "local")}
            given = explicit.get(frozenset([(lk["chip_a"], lk["link_a"]), (lk["chip_b"], lk["link_b"])]), {})
            for key in ("latency_cycles", "spread_cycles"):
                if given.get(key) is not None:
                    new[key] = given[key]
            links.append(new)
    config = {k: v for k, v in system.config.items()
              if k not in ("topology", "nodes", "links", "chips", "root_chip", "chip_drift_ppm")}
    if system.config.get("chip_drift_ppm"):
        config["chip_drift_ppm"] = [system.config["chip_drift_ppm"][c] for c in route]
    config.update(topology="links", chips=len(route), links=links)
    return System.load(config)


__all__ = ["system_for_chips", "system_config", "rack_links", "pipeline_route", "route_links", "sub_system",
           "NODE_CHIPS", "RACK_CHIPS", "MAX_RACKS", "MAX_CHIPS"]
