"""Each grader of tests/test_exercises.py fails on an emptied body and on plausible wrong bodies.

A mutant is the real function's source with one edit (a mistake a student could make), compiled in
dcae15's namespace and put in the real one's place; the grader must then fail. If an edit no longer
matches the source, the test says so: the mutant list follows the code.
"""

import ast
import inspect
import textwrap

import pytest

import dcae15
import test_exercises as ex

# (function, grader, [(what the mistake is, text of the real body, the mistaken text), ...])
MUTANTS = {
    "channel_mask": (ex.grade_channel_mask, [
        ("keeps the last c' channels", "torch.arange(c, device=device).view(1, -1) < keep",
         "torch.arange(c, device=device).view(1, -1) >= c - keep"),
        ("keeps c' + 1 channels", "torch.arange(c, device=device).view(1, -1) < keep",
         "torch.arange(c, device=device).view(1, -1) <= keep"),
        ("a 1-D mask that does not broadcast over (B, C, H, W)", "[:, :, None, None]", "[0]"),
        ("one c' for the whole batch", "keep = c_prime.view(-1, 1)", "keep = c_prime[:1].view(-1, 1)"),
    ]),
    "AdaptiveOutputConv.forward": (ex.grade_adaptive_output_conv, [
        ("the last c' filters", "self.conv.weight[:c], self.conv.bias[:c]",
         "self.conv.weight[-c:], self.conv.bias[-c:]"),
        ("zeroes channels instead of leaving them out",
         "return F.conv2d(x, self.conv.weight[:c], self.conv.bias[:c], padding=1)",
         "return self.conv(x) * channel_mask(self.conv.out_channels, c)"),
        ("drops the bias", "self.conv.bias[:c], padding=1", "None, padding=1"),
    ]),
    "AdaptiveInputConv.forward": (ex.grade_adaptive_input_conv, [
        ("the last c' input columns", "self.conv.weight[:, : z.shape[1]]",
         "self.conv.weight[:, self.conv.in_channels - z.shape[1]:]"),
        ("scales the bias with c'", "self.conv.bias, padding=1",
         "self.conv.bias * z.shape[1] / self.conv.in_channels, padding=1"),
    ]),
    "FlowMatching.flow_loss": (ex.grade_flow_loss, [
        ("the target's sign (eps - x_0)", "masked_mse(x0 - noise,", "masked_mse(noise - x0,"),
        ("t = 0 is data, not noise", "x_t = (t_ * x0 + (1 - t_) * noise) * mask",
         "x_t = ((1 - t_) * x0 + t_ * noise) * mask"),
        ("the model sees the unmasked x_t", "x_t = (t_ * x0 + (1 - t_) * noise) * mask",
         "x_t = t_ * x0 + (1 - t_) * noise"),
        ("normalises by all C H W elements",
         "return masked_mse(x0 - noise, model(x_t, t, y), mask)",
         "return ((x0 - noise - model(x_t, t, y)) * mask).pow(2).mean(dim=(1, 2, 3))"),
        ("one t for the whole batch", "t = torch.rand(B, generator=generator, device=x0.device)",
         "t = torch.rand(1, generator=generator, device=x0.device).expand(B)"),
        ("uniform noise", "noise = torch.randn(", "noise = torch.rand("),
    ]),
    "FlowMatching.sample": (ex.grade_flow_sampler, [
        ("Heun without the average: the end slope only", "x = x + dt * 0.5 * (v + velocity(x_next, t + dt))",
         "x = x + dt * velocity(x_next, t + dt)"),
        ("Euler takes the slope at the end of the step", "x = x + dt * v\n",
         "x = x + dt * velocity(x, t + dt)\n"),
        ("time runs from data to noise", "t, dt = i / steps, 1.0 / steps", "t, dt = 1 - i / steps, 1.0 / steps"),
        ("does not keep the channels beyond c' at 0",
         "return guided(model, x, t_batch, y, cfg_scale).float() * mask",
         "return guided(model, x, t_batch, y, cfg_scale).float()"),
    ]),
    "GaussianDiffusion.ddim_sample": (ex.grade_ddim, [
        ("steps from t = 0 up to T - 1", "torch.linspace(self.num_timesteps - 1, 0, steps",
         "torch.linspace(0, self.num_timesteps - 1, steps"),
        ("the last step stops at t = 0 instead of landing on x_0",
         "if i + 1 < len(ts) else 1.0", "if i + 1 < len(ts) else abar[0].item()"),
        ("the prediction of x_0 without dividing by sqrt(alphabar_t)",
         "x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)", "x0 = x - math.sqrt(1 - a_t) * eps"),
        ("sigma without its square root (eq. 16)",
         "sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))",
         "sigma = eta * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)"),
        ("the noise direction keeps its full length when eta > 0",
         "math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps", "math.sqrt(1 - a_prev) * eps"),
    ]),
}


def owner_and_name(qualname):
    owner, _, name = qualname.rpartition(".")
    return (getattr(dcae15, owner) if owner else dcae15), name


def compile_in_dcae15(source, name):
    namespace = dict(vars(dcae15))
    exec(compile(source, f"<mutant of {name}>", "exec"), namespace)
    return namespace[name]


def real_source(qualname):
    owner, name = owner_and_name(qualname)
    return textwrap.dedent(inspect.getsource(getattr(owner, name)))


def assert_grader_fails(qualname, source, monkeypatch):
    """Put `source` (a version of the function `qualname`) in the real one's place: its grader fails."""
    owner, name = owner_and_name(qualname)
    monkeypatch.setattr(owner, name, compile_in_dcae15(source, name))
    with pytest.raises(AssertionError):  # the grader's own check, not a NameError of the mutant
        MUTANTS[qualname][0]()


CASES = [(q, what, old, new) for q, (_, edits) in MUTANTS.items() for what, old, new in edits]


@pytest.mark.parametrize("qualname,what,old,new", CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_grader_catches_a_wrong_body(qualname, what, old, new, monkeypatch):
    source = real_source(qualname)
    assert source.count(old) == 1, f"the mutant '{what}' no longer matches {qualname}: update MUTANTS"
    assert_grader_fails(qualname, source.replace(old, new), monkeypatch)


@pytest.mark.parametrize("qualname", list(MUTANTS))
def test_grader_catches_an_emptied_body(qualname, monkeypatch):
    """The student's starting point: the body deleted, the docstring kept (`pass`)."""
    tree = ast.parse(real_source(qualname))
    fn = tree.body[0]
    doc = [fn.body[0]] if isinstance(fn.body[0], ast.Expr) else []
    fn.body = doc + [ast.Pass()]
    assert_grader_fails(qualname, ast.unparse(tree), monkeypatch)


@pytest.mark.parametrize("qualname", list(MUTANTS))
def test_grader_passes_the_real_body(qualname):
    MUTANTS[qualname][0]()
