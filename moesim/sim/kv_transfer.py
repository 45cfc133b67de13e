"""Moving a prompt's KV cache from the prefill pool to a decode group (disaggregated serving).

A request whose prompt the prefill pool completed is routed to a decode group
(``policies.router``) and waits there, first come first served, until the group has the KV
blocks for its prompt and first token and room for one more sequence; then its blocks are
reserved and its KV moves: ``prompt x kv_width x layers`` values in ``kv_cache_dtype``, sent
by the prefill group's GPUs in parallel and received by each decode GPU for its share of the
heads (MLA's latent whole on every one), so the slower side's bytes per GPU cross one port:
``latency + max(total / prefill_tp, total / decode_kv_split) / bandwidth``. The link is NVLink
when the whole cluster is one NVLink domain, else the network (the slower pool's). Each prefill
group's sending port and each decode group's receiving port carries one transfer at a time.

With ``kv_transfer: layerwise`` (Splitwise, Mooncake) and blocks free when the prompt's last
step ends, each layer's KV is sent as the layer finishes: a two-stage pipeline over the
model's layers, ``a = step / L`` of compute and ``b = transfer / L`` of sending per layer, done
``a + b + (L - 1) max(a, b)`` after the step started. The decode group's blocks are checked
when the step ends, against its state as of its current step (at most one decode step early).
The request emits its first token when the KV lands (TTFT includes the transfer).
"""

from __future__ import annotations

import heapq

import numpy as np

from moesim.config import LinkSpec, Scenario
from moesim.errors import ConfigError
from moesim.hardware.costs import transfer_time
from moesim.policies import StepOutcome
from moesim.sim.serving_pool import Pool

__all__ = ["KVHandoff", "kv_link"]

_NAN = float("nan")


def kv_link(scenario: Scenario) -> LinkSpec:
    """The link a prompt's KV crosses between the pools (refused when a profile has none)."""
    cluster = scenario.cluster
    devices = [pool.device for pool in scenario.clusters()]
    kind = "nvlink" if cluster.gpus <= cluster.domain else "network"
    links = [getattr(device.links, kind) for device in devices]
    if any(link is None for link in links):
        raise ConfigError(
            None,
            "cluster.pools",
            f"moving KV between the pools needs links.{kind} in every pool's device profile",
        )
    return min(links, key=lambda link: link.bandwidth * link.efficiency)  # type: ignore[union-attr]


class KVHandoff:
    """Hands requests from ``prefill`` to ``decode``: queues, ports, transfers and landings."""

    def __init__(self, scenario: Scenario, prefill: Pool, decode: Pool) -> None:
        model = scenario.model
        self.prefill, self.decode, self.env = prefill, decode, decode.env
        self.link = kv_link(scenario)
        self.layers = model.layers
        pool = scenario.cluster.role("prefill")
        self.layerwise = pool is not None and pool.kv_transfer == "layerwise"
        total = model.kv_width * model.part_bytes("kv_cache") * model.layers
        split = min(decode.layout.attention_tp, model.kv_splits)
        # bytes per prompt token through the busiest port of a transfer
        self.port_bytes = total * max(1.0 / prefill.layout.attention_tp, 1.0 / split)
        self.send_free_A = np.zeros(len(prefill.groups.states))
        self.recv_free_A = np.zeros(len(decode.groups.states))
        self.queues: list[list[tuple[int, int, float, float]]] = [[] for _ in decode.groups.states]
        self.in_flight_A = np.zeros(len(decode.groups.states), dtype=np.int64)  # tokens
        self.landing_A = np.zeros(len(decode.groups.states), dtype=np.int64)  # requests
        self.queued_A = np.zeros(len(decode.groups.states), dtype=np.int64)  # tokens
        self.landing_s: list[float] = []  # a heap of the times transfers land
        size = len(decode.groups.arrival_s)
        self.transfer_s = np.full(size, _NAN)  # per request: ready to landed
        most = getattr(decode.scheduler.params, "max_sequences", None)
        self.max_sequences = most if most is not None else np.iinfo(np.int64).max

    def next_landing(self) -> float:
        while self.landing_s and self.landing_s[0] <= self.env.now:
            heapq.heappop(self.landing_s)
        return self.landing_s[0] if self.landing_s else np.inf

    def prefilled(self, start: float, latency_n: np.ndarray, outcomes: list[StepOutcome]) -> None:
        """The prefill pool's step from ``start`` ended: its finished prompts that have more
        tokens to emit keep their KV there until it lands, are routed to decode groups, and
        the transfers that fit start."""
        done = np.concatenate([o.finished for o in outcomes] or [np.zeros(0, np.int64)])
        done = done[self.decode.groups.output[done] > 1]
        if not done.size:
            return
        step_s = float(latency_n[-1])
        prefill = self.prefill.groups
        source = prefill.group_R[done]
        for group in np.unique(source):  # held until the transfer lands (freed at finish)
            mine = done[source == group]
            prefill.states[group].kv.grow(mine, prefill.prompt[mine])
        outstanding = self.in_flight_A + self.queued_A
        chosen = self.decode.router.route(done, outstanding, self.decode.groups.output[done] - 1)
        self.decode.groups.group_R[done] = chosen
        for request, group, sender in zip(done, chosen, source, strict=True):
            self.queues[group].append((int(request), int(sender), start, step_s))
            self.queued_A[group] += self._tokens(int(request))
        self.admit(fresh=set(done.tolist()))

    def admit(self, fresh: set[int] | None = None) -> None:
        """Reserve blocks and start the transfers of the queued requests that fit (at a
        decode step's boundary, or as a prefill step ends: ``fresh``, the prompts it ended,
        may send layer by layer). A group takes none while requests it preempted wait, and
        leaves its running decodes the blocks their next tokens need."""
        decode = self.decode
        for group, queue in enumerate(self.queues):
            state = decode.groups.states[group]
            if not queue or state.waiting.size:
                continue
            decoding = state.running[~state.prefilling(state.running)]
            free = state.kv.free_blocks - int(
                state.kv.needed(decoding, state.context_R[decoding] + 1).sum()
            )
            while queue:
                request, sender, start, step_s = queue[0]
                need = state.kv.blocks_for(int(state.prompt_tokens_R[request]) + 1)
                sequences = state.running.size + int(self.landing_A[group])
                if need > free or sequences >= self.max_sequences:
                    break
                queue.pop(0)
                self.queued_A[group] -= self._tokens(request)
                free -= need
                prompt = int(state.prompt_tokens_R[request])
                state.kv.grow(np.array([request]), np.array([prompt + 1]))
                pipelined = fresh is not None and request in fresh
                self._send(request, sender, group, start, step_s, pipelined)

    def _send(
        self, request: int, sender: int, group: int, start: float, step_s: float, pipelined: bool
    ) -> None:
        now = self.env.now
        prompt = int(self.decode.groups.prompt[request])
        seconds = float(transfer_time(self.link, prompt * self.port_bytes))
        port = max(self.send_free_A[sender], self.recv_free_A[group])
        landed = max(now, port) + seconds
        if pipelined and self.layerwise:  # the step ended now: its layers sent as they ran
            a, b = step_s / self.layers, seconds / self.layers
            landed = max(start + a + b + (self.layers - 1) * max(a, b), port + seconds)
        self.send_free_A[sender] = self.recv_free_A[group] = landed
        self.transfer_s[request] = landed - (start + step_s)  # from the prompt's step's end
        self.in_flight_A[group] += self._tokens(request)
        self.landing_A[group] += 1
        heapq.heappush(self.landing_s, landed)
        event = self.env.timeout(max(landed - now, 0.0))
        event.callbacks.append(lambda _event: self._land(request, sender, group))

    def _land(self, request: int, sender: int, group: int) -> None:
        """The KV of ``request`` is in ``group``'s cache: its first token is out, and the
        prefill group frees its copy."""
        groups, now = self.decode.groups, self.env.now
        groups.first_token_s[request] = groups.last_token_s[request] = now
        groups.states[group].resume(np.array([request]))
        self.prefill.groups.states[sender].kv.free(np.array([request]))
        self.in_flight_A[group] -= self._tokens(request)
        self.landing_A[group] -= 1
        self.decode.changed(group)
        self.prefill.changed(sender)

    def _tokens(self, request: int) -> int:
        """What a request adds to its decode group's load: the tokens it has left to emit."""
        return int(self.decode.groups.output[request] - 1)
