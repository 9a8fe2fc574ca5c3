"""How long a forward pass will take, learnt from the passes already run on this machine.

Model: step_ms ~= decode_ms(B) + ms_per_prefill_token * P, for B decoding sequences (one token each)
and P prefill tokens. decode_ms is an exponential moving average per batch size (interpolated for
sizes not seen yet); ms_per_prefill_token is an average over steps with enough prefill tokens to
measure it. The scheduler uses it to give prefill chunks whatever fits in a step-time target while
turns are streaming, so their inter-token latency stays bounded on a fast or a slow machine alike.
"""

from __future__ import annotations

from collections.abc import Callable

_ALPHA = 0.2  # weight of a new observation in the moving averages
_MIN_PREFILL_TO_MEASURE = 8  # tokens; fewer are lost in the noise of the decode part
_CALIBRATION_PREFILL = 256  # tokens of the calibration's prefill pass


class StepCostModel:
    def __init__(self, ms_per_prefill_token: float = 2.0, decode_base_ms: float = 40.0, decode_ms_per_seq: float = 4.0):
        """Initial guesses (a 135M-parameter model in float32 on 2 cores); replaced by measurements."""
        self.ms_per_prefill_token = ms_per_prefill_token
        self._decode_ms: dict[int, float] = {}  # decode batch size -> EMA of step ms
        self._base, self._per_seq = decode_base_ms, decode_ms_per_seq

    def observe(self, num_decode: int, num_prefill_tokens: int, ms: float) -> None:
        if num_prefill_tokens == 0:
            if num_decode:
                old = self._decode_ms.get(num_decode)
                self._decode_ms[num_decode] = ms if old is None else old + _ALPHA * (ms - old)
        elif num_prefill_tokens >= _MIN_PREFILL_TO_MEASURE:
            per_token = max(0.05, (ms - self.decode_ms(num_decode)) / num_prefill_tokens)
            self.ms_per_prefill_token += _ALPHA * (per_token - self.ms_per_prefill_token)

    def decode_ms(self, batch: int) -> float:
        """Predicted ms of a step decoding `batch` sequences (0 for an empty batch)."""
        if batch == 0:
            return 0.0
        if batch in self._decode_ms:
            return self._decode_ms[batch]
        below = max((b for b in self._decode_ms if b < batch), default=None)
        above = min((b for b in self._decode_ms if b > batch), default=None)
        if below is not None and above is not None:
            lo, hi = self._decode_ms[below], self._decode_ms[above]
            return lo + (hi - lo) * (batch - below) / (above - below)
        if below is not None:  # extrapolate with the prior slope
            return self._decode_ms[below] + self._per_seq * (batch - below)
        if above is not None:
            return max(1.0, self._decode_ms[above] - self._per_seq * (above - batch))
        return self._base + self._per_seq * batch

    def prefill_budget(self, num_decode: int, target_ms: float) -> int:
        """Prefill tokens that keep a step with num_decode decoders within target_ms (may be 0)."""
        spare = target_ms - self.decode_ms(num_decode)
        return max(0, int(spare / self.ms_per_prefill_token))


def calibrate(cost: StepCostModel, run: Callable[[int, int], float], max_batch: int) -> None:
    """Measure a few forward passes before the first turn, so that admission and the scheduler predict
    from this machine's speed at once. run(num_decode, num_prefill_tokens) runs one pass and returns
    its milliseconds (each shape twice: the first run warms it up)."""
    for batch in sorted({1, min(8, max_batch), max_batch}):
        run(batch, 0)
        cost.observe(batch, 0, run(batch, 0))
    run(0, _CALIBRATION_PREFILL)
    cost.ms_per_prefill_token = max(0.05, run(0, _CALIBRATION_PREFILL) / _CALIBRATION_PREFILL)
