"""The benchmark cases by name: what each measures, its parameters, and how it runs.

A case's module has `prepare(folder, **params)` (torch process: writes the shared random weights and initial
trainable values) and `build(side, folder, **params) -> step` for side "ours" / "ref"; `step()` does one timed
unit of work and returns a float computed from its result (a loss), so the work has finished when it returns.
"""
import dataclasses
import importlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Case:
    name: str
    module: str
    what: str
    params: dict = field(default_factory=dict)
    quick: bool = False  # part of --quick
    selftest: bool = False  # harness self-checks (no models); only run when named
    frameworks: bool = True  # False: the workers skip loading MindSpore/torch (fast harness self-checks)

    @property
    def big(self):
        """A full-size model: runs under the shared memory lock, one framework resident at a time."""
        return not str(self.params.get("spec_name", "tiny-")).startswith("tiny-")

    def with_params(self, overrides):
        """The case with some parameters changed (`python -m bench --set latent=32`); unknown keys refused."""
        if not overrides:
            return self
        unknown = sorted(set(overrides) - set(self.params))
        if unknown:
            raise KeyError(f"case {self.name}: no parameter {', '.join(unknown)} (it has: {', '.join(self.params)})")
        return dataclasses.replace(self, params={**self.params, **overrides})

    def _module(self):
        return importlib.import_module(f"bench.cases.{self.module}")

    def prepare(self, folder):
        self._module().prepare(folder, **self.params)

    def build(self, side, folder):
        return self._module().build(side, folder, **self.params)


SD15_64 = dict(spec_name="sd15", batch=1, latent=64)

CASES = {c.name: c for c in [
    Case("ti_step_tiny_sd1", "ti_step", "TI optimizer step, tiny SD1, batch 2, 64 px",
         dict(spec_name="tiny-sd15", batch=2, latent=None), quick=True),
    Case("ti_step_tiny_sdxl", "ti_step", "TI optimizer step (rows in both encoders), tiny SDXL, batch 2, 64 px",
         dict(spec_name="tiny-sdxl", batch=2, latent=None), quick=True),
    Case("lora_step_tiny_sd1", "lora_step", "LoRA (UNet, rank 4) optimizer step, tiny SD1, batch 2, 64 px",
         dict(spec_name="tiny-sd15", batch=2, rank=4, latent=None), quick=True),
    Case("gen_tiny_sd1_20steps", "gen", "seconds per image: tiny SD1, Euler 20 steps, CFG 7.5, 64 px, batch 1",
         dict(spec_name="tiny-sd15", steps=20, sampler="euler", size=64), quick=True),
    Case("ti_step_sd15_64", "ti_step", "TI optimizer step, SD1.5 UNet + CLIP-L, batch 1, 64x64 latents",
         dict(SD15_64)),
    Case("lora_step_sd15_64", "lora_step", "LoRA (UNet, rank 4) step, SD1.5, batch 1, 64x64 latents",
         dict(SD15_64, rank=4)),
    Case("unet_fwd_bwd_sd15_64", "unet_fwd_bwd",
         "SD1.5 UNet forward + backward to the context (no parameter grads), batch 1, 64x64 latents",
         dict(spec_name="sd15", latent=64, checkpointing=False)),
    Case("selftest_sleep", "selftest", "harness check: a 200x200 numpy matmul loop, no models, no frameworks",
         dict(mode="ok"), selftest=True, frameworks=False),
    Case("selftest_crash", "selftest", "harness check: the ours worker is killed by SIGKILL while building",
         dict(mode="crash"), selftest=True, frameworks=False),
]}


def get_case(name):
    if name not in CASES:
        raise KeyError(f"unknown case {name!r}; known: {', '.join(CASES)}")
    return CASES[name]


def default_cases(quick):
    return [c.name for c in CASES.values() if not c.selftest and (c.quick or not quick)]
