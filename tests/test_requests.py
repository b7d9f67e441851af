"""The request set: requests in varied phrasing, each with the PyTorch it must mean written by hand here
(a lambda over the named inputs), compared with `to_reference(...)`'s function on random inputs. The
test prints the score; at least 90% must compose correctly and none may compose to something else (a
wrong reference is a failure, never counted as a refusal). Requests that must be refused are listed too.
References only (no kernels), so it stays fast."""

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from kernelgen.frontends.composer import ComposeError
from kernelgen.frontends.sample import sample_inputs
from kernelgen.frontends.text import to_reference

SEEDS = (0, 1)


def rms(x, w=None, eps=None):
    return F.rms_norm(x, (x.shape[-1],), w, eps)


def ln(x, w=None, b=None, eps=1e-5):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


def causal_softmax(x):
    """Key j masked for query i when j > i + (N - M), built with explicit loops."""
    m, n = x.shape[-2:]
    mask = torch.zeros(m, n, dtype=torch.bool)
    for i in range(m):
        for j in range(n):
            mask[i, j] = j > i + (n - m)
    return torch.softmax(x.masked_fill(mask, float("-inf")), -1)


CASES = [
    # shared/requests.md 1-14
    ("fused rmsnorm + residual", lambda x, residual, weight: (rms(x + residual, weight), x + residual)),
    ("silu and mul", lambda a, b: F.silu(a) * b),
    ("gelu and mul (tanh approximation)", lambda a, b: F.gelu(a, approximate="tanh") * b),
    ("residual add then layernorm", lambda x, residual, weight, ln_bias: ln(x + residual, weight, ln_bias)),
    ("scaled softmax", lambda x, scale: torch.softmax(x * scale, -1)),
    ("bias add + gelu", lambda x, bias: F.gelu(x + bias)),
    ("log softmax", lambda x: torch.log_softmax(x, -1)),
    ("add + relu", lambda a, b: F.relu(a + b)),
    ("causal masked softmax", causal_softmax),
    ("matmul + bias + relu", lambda a, b, bias: F.relu(a @ b + bias)),
    ("clamp then square", lambda x, lo, hi: torch.clamp(x, lo, hi) ** 2),
    ("mean over the last dim", lambda x: x.mean(-1)),
    ("rms norm then silu", lambda x, weight: F.silu(rms(x, weight))),
    ("dequantize int8 with per-row scale", lambda x, scale: x.float() * scale[:, None]),
    # the misreadings of the issue
    ("silu of x plus bias", lambda x, bias: F.silu(x + bias)),
    ("sigmoid gating a*sigmoid(b)", lambda a, b: a * torch.sigmoid(b)),
    ("subtract the row max", lambda x: x - x.amax(-1, keepdim=True)),
    ("fused multiply add a*b+c", lambda a, b, c: a * b + c),
    ("row variance", lambda x: x.var(-1)),
    ("matmul then scale by alpha and add residual", lambda a, b, alpha, residual: (a @ b) * alpha + residual),
    ("rms norm followed by multiplication with a gate tensor", lambda x, weight, gate: rms(x, weight) * gate),
    ("cross entropy loss from logits and integer targets", lambda logits, target: F.cross_entropy(logits, target)),
    ("swish x * sigmoid(x)", lambda x: x * torch.sigmoid(x)),
    # formulas
    ("y = silu(x + bias)", lambda x, bias: F.silu(x + bias)),
    ("out = a * torch.sigmoid(b)", lambda a, b: a * torch.sigmoid(b)),
    ("h = x + r; y = 0.5 * h + h", lambda x, r: 1.5 * (x + r)),
    ("y = 0.5 * y + y", lambda y: 1.5 * y),
    ("gelu(x + bias)", lambda x, bias: F.gelu(x + bias)),
    ("relu(a + b)", lambda a, b: F.relu(a + b)),
    ("silu(a) * b", lambda a, b: F.silu(a) * b),
    ("y = F.gelu(x, approximate='tanh')", lambda x: F.gelu(x, approximate="tanh")),
    ("y = torch.softmax(x * scale, dim=-1)", lambda x, scale: torch.softmax(x * scale, -1)),
    ("softmax(x * scale, -1)", lambda x, scale: torch.softmax(x * scale, -1)),
    ("y = x.float() * scale[:, None]", lambda x, scale: x * scale[:, None]),
    ("y = rms_norm(x, w)", lambda x, w: rms(x, w)),
    ("y = layer_norm(x + r, w, b)", lambda x, r, w, b: ln(x + r, w, b)),
    ("y = torch.clamp(x, -1.0, 1.0) ** 2", lambda x: x.clamp(-1, 1) ** 2),
    ("y = x - x.amax(-1, keepdim=True)", lambda x: x - x.max(-1, keepdim=True).values),
    ("y = torch.where(x > 0, x, 0.1 * x)", lambda x: F.leaky_relu(x, 0.1)),
    ("y = swiglu(a, b)", lambda a, b: F.silu(a) * b),
    ("y = F.linear(x, w, bias)", lambda x, w, bias: x @ w.T + bias),
    ("y = torch.relu(a @ b + bias)", lambda a, b, bias: F.relu(a @ b + bias)),
    ("y = F.cross_entropy(logits, target)", lambda logits, target: F.cross_entropy(logits, target)),
    ("y = torch.log(x) + 1", lambda x: torch.log(x) + 1),
    ("mish(x) * 2", lambda x: x * torch.tanh(F.softplus(x)) * 2),
    ("y = x * 2; z = y - 1; (y, z)", lambda x: (x * 2, x * 2 - 1)),
    ("h = x + residual\ny = rms_norm(h, w, 1e-6)\n(y, h)", lambda x, residual, w: (rms(x + residual, w, 1e-6),
                                                                                x + residual)),
    ("  silu   of  x\nplus bias ", lambda x, bias: F.silu(x + bias)),
    # activations in words
    ("relu", lambda x: x.clamp_min(0)),
    ("apply relu6", lambda x: x.clamp(0, 6)),
    ("leaky relu with slope 0.2", lambda x: torch.where(x > 0, x, 0.2 * x)),
    ("leaky_relu 0.1", lambda x: torch.where(x > 0, x, 0.1 * x)),
    ("leaky relu", lambda x: torch.where(x > 0, x, 0.01 * x)),
    ("elu alpha 0.5", lambda x: torch.where(x > 0, x, 0.5 * (torch.exp(x) - 1))),
    ("selu activation", lambda x: F.selu(x)),
    ("celu with alpha 2", lambda x: torch.clamp_min(x, 0) + torch.clamp_max(2 * (torch.exp(x / 2) - 1), 0)),
    ("gelu", lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))),
    ("tanh-approximate gelu", lambda x: F.gelu(x, approximate="tanh")),
    ("gelu with tanh approximation", lambda x: F.gelu(x, approximate="tanh")),
    ("quick gelu", lambda x: x * torch.sigmoid(1.702 * x)),
    ("swish", lambda x: x * torch.sigmoid(x)),
    ("mish", lambda x: x * torch.tanh(F.softplus(x))),
    ("softplus with beta 2", lambda x: torch.log1p(torch.exp(2 * x)) / 2),
    ("softsign", lambda x: x / (1 + x.abs())),
    ("hard tanh between -2 and 2", lambda x: x.clamp(-2, 2)),
    ("hardsigmoid", lambda x: (x / 6 + 0.5).clamp(0, 1)),
    ("hard swish", lambda x: x * (x + 3).clamp(0, 6) / 6),
    ("sigmoid", lambda x: 1 / (1 + torch.exp(-x))),
    ("tanh", lambda x: torch.tanh(x)),
    ("log sigmoid", lambda x: -F.softplus(-x)),
    ("tanhshrink", lambda x: x - torch.tanh(x)),
    ("softshrink 0.3", lambda x: torch.where(x > 0.3, x - 0.3, torch.where(x < -0.3, x + 0.3, 0 * x))),
    ("hardshrink with lambda 0.25", lambda x: torch.where(x.abs() > 0.25, x, 0 * x)),
    ("threshold 0.1 value 20", lambda x: torch.where(x > 0.1, x, torch.full_like(x, 20.0))),
    # pointwise math and constants
    ("square root of x", lambda x: x.sqrt()),
    ("reciprocal square root", lambda x: 1 / x.sqrt()),
    ("exp then log", lambda x: x),
    ("absolute value", lambda x: x.abs()),
    ("negate", lambda x: -x),
    ("x squared", lambda x: x * x),
    ("clamp to [-1, 1]", lambda x: x.clamp(-1, 1)),
    ("clip between 0 and 6", lambda x: x.clamp(0, 6)),
    ("subtract 2.0", lambda x: x - 2),
    ("divide by 10", lambda x: x / 10),
    ("min with 2.0", lambda x: torch.minimum(x, torch.tensor(2.0, dtype=x.dtype))),
    ("max with 0", lambda x: x.clamp_min(0)),
    ("multiply by 3 then add 1", lambda x: 3 * x + 1),
    ("pow 3", lambda x: x ** 3),
    ("raise to the power of 3", lambda x: x * x * x),
    ("scale by 0.5 then tanh", lambda x: torch.tanh(0.5 * x)),
    ("hardswish then multiply by 2", lambda x: F.hardswish(x) * 2),
    ("cast to fp16", lambda x: x.half()),
    # grouping
    ("add bias then gelu (tanh approximation)", lambda x, bias: F.gelu(x + bias, approximate="tanh")),
    ("bias add followed by silu", lambda x, bias: F.silu(x + bias)),
    ("x plus bias then silu", lambda x, bias: F.silu(x + bias)),
    ("silu applied to x + bias", lambda x, bias: F.silu(x + bias)),
    ("sigmoid of a times b", lambda a, b: torch.sigmoid(a * b)),
    ("relu of (x - 1)", lambda x: F.relu(x - 1)),
    ("softmax of x divided by temperature", lambda x, temperature: torch.softmax(x / temperature, -1)),
    ("silu then multiply", lambda x, y: F.silu(x) * y),
    ("subtract the mean of each row", lambda x: x - x.mean(-1, keepdim=True)),
    ("softmax with a causal mask", causal_softmax),
    ("gemm then add bias then relu", lambda a, b, bias: F.relu(a @ b + bias)),
    ("matmul of a and b", lambda a, b: a @ b),
    # reductions
    ("sum over the last dim", lambda x: x.sum(-1)),
    ("row sum", lambda x: x.sum(-1)),
    ("average of each row", lambda x: x.sum(-1) / x.shape[-1]),
    ("max over the last dim", lambda x: x.max(-1).values),
    ("row min", lambda x: x.min(-1).values),
    ("population variance over the last dim", lambda x: ((x - x.mean(-1, keepdim=True)) ** 2).mean(-1)),
    ("standard deviation of each row", lambda x: x.std(-1, unbiased=True)),
    ("biased std per row", lambda x: x.var(-1, unbiased=False).sqrt()),
    ("mean", lambda x: x.sum() / x.numel()),
    ("sum over dim 0", lambda x: x.sum(0)),
    ("column sum", lambda x: x.sum(0)),
    ("logsumexp", lambda x: x.exp().sum(-1).log()),
    ("softmax over dim 0", lambda x: torch.softmax(x, 0)),
    ("softmin", lambda x: torch.softmax(-x, -1)),
    # norms
    ("rmsnorm with eps 1e-6", lambda x, weight: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight),
    ("layer norm with eps 1e-6", lambda x, weight, ln_bias: ln(x, weight, ln_bias, 1e-6)),
    ("layer norm without weight and bias", lambda x: (x - x.mean(-1, keepdim=True)) /
     torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)),
    ("rms norm without weight", lambda x: rms(x)),
    ("l2 normalize each row", lambda x: x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)),
    ("rms norm + residual", lambda x, residual, weight: (rms(x + residual, weight), x + residual)),
    ("add skip connection and rmsnorm", lambda x, residual, weight: (rms(x + residual, weight), x + residual)),
    ("layer norm + residual", lambda x, residual, weight, ln_bias: (ln(x + residual, weight, ln_bias), x + residual)),
    # losses
    ("mse loss", lambda x, target: ((x - target) ** 2).mean()),
    ("l1 loss with sum reduction", lambda x, target: (x - target).abs().sum()),
    ("smooth l1 loss", lambda x, target: F.smooth_l1_loss(x, target)),
    ("huber loss with delta 2", lambda x, target: F.huber_loss(x, target, delta=2.0)),
    ("kl divergence", lambda logp, target: (target * (target.log() - logp)).mean()),
    ("binary cross entropy", lambda p, target: -(target * p.log() + (1 - target) * (1 - p).log()).mean()),
    ("bce with logits", lambda logits, target: F.binary_cross_entropy(torch.sigmoid(logits), target)),
    # gated, matmul family
    ("swiglu", lambda a, b: F.silu(a) * b),
    ("geglu", lambda a, b: F.gelu(a) * b),
    ("reglu", lambda a, b: F.relu(a) * b),
    ("linear layer", lambda x, weight, bias: x @ weight.T + bias),
    ("linear without bias", lambda x, weight: x @ weight.T),
    ("batched matmul", lambda a, b: torch.einsum("bmk,bkn->bmn", a, b)),
    # verb-object phrasing, articles, more synonyms
    ("divide x by the row sum", lambda x: x / x.sum(-1, keepdim=True)),
    ("divide x by its row sum", lambda x: x / x.sum(-1, keepdim=True)),
    ("multiply x by sigmoid of x", lambda x: x * torch.sigmoid(x)),
    ("x times sigmoid of x", lambda x: x * torch.sigmoid(x)),
    ("add a and b then relu", lambda a, b: F.relu(a + b)),
    ("subtract a from b", lambda a, b: b - a),
    ("add bias to x then gelu", lambda x, bias: F.gelu(x + bias)),
    ("a plus b", lambda a, b: a + b),
    ("a times b plus c", lambda a, b, c: a * b + c),
    ("tanh of x divided by 2", lambda x: torch.tanh(x / 2)),
    ("x divided by 2", lambda x: x / 2),
    ("relu squared", lambda x: F.relu(x) ** 2),
    ("clamp min 0 max 6", lambda x: x.clamp(0, 6)),
    ("hardtanh 0 6", lambda x: x.clamp(0, 6)),
    ("exponential of x minus 1", lambda x: torch.exp(x - 1)),
    ("leaky relu negative slope 0.2", lambda x: F.leaky_relu(x, 0.2)),
    ("residual add followed by rms norm with eps 1e-5", lambda x, residual, weight: rms(x + residual, weight, 1e-5)),
    ("gemm with bias followed by relu", lambda a, b, bias: F.relu(a @ b + bias)),
    ("matmul bias relu", lambda a, b, bias: F.relu(a @ b + bias)),
    ("geglu with tanh approximation", lambda a, b: F.gelu(a, approximate="tanh") * b),
    ("silu(x) * y", lambda x, y: F.silu(x) * y),
    ("subtract the max of each row", lambda x: x - x.amax(-1, keepdim=True)),
    ("scale by alpha and add residual", lambda x, alpha, residual: x * alpha + residual),
    ("multiply by a gate tensor", lambda x, gate: x * gate),
    ("softmax over the last dimension of x times scale", lambda x, scale: torch.softmax(x * scale, -1)),
    ("softmax and add bias", lambda x, bias: torch.softmax(x, -1) + bias),  # a verb keeps the written order
    ("softmax with bias", lambda x, bias: torch.softmax(x + bias, -1)),  # a noun joined to a softmax feeds it
    ("softmax and scale by 2", lambda x: torch.softmax(x, -1) * 2),
    ("scale x by 2", lambda x: 2 * x),
    ("gelu and tanh", lambda x: torch.tanh(F.gelu(x))),
    ("gelu tanh", lambda x: F.gelu(x, approximate="tanh")),
    ("clamp max 6", lambda x: x.clamp(max=6)),
    ("relu(x) then add 1", lambda x: F.relu(x) + 1),
    ("gated gelu", lambda a, b: F.gelu(a) * b),
    ("add one", lambda x: x + 1),
    ("silu and mul with the input split in halves", lambda x: F.silu(x[:, : x.shape[1] // 2]) * x[:, x.shape[1] // 2:]),
    ("swiglu on one input split in half", lambda x: F.silu(x[:, : x.shape[1] // 2]) * x[:, x.shape[1] // 2:]),
    ("a, b = x.chunk(2, -1); y = silu(a) * b", lambda x: F.silu(x.chunk(2, -1)[0]) * x.chunk(2, -1)[1]),
    ("y = min(x, 0)", lambda x: x.clamp(max=0)),  # Python's min of two values is elementwise
    ("y = exp(x - max(x))", lambda x: torch.exp(x - x.max())),  # and of one tensor, its largest element
    ("layer norm then add bias", lambda x, weight, ln_bias, bias: ln(x, weight, ln_bias) + bias),
    ("bias add then layer norm", lambda x, bias, weight, ln_bias: ln(x + bias, weight, ln_bias)),
    ("rms norm then layer norm", lambda x, weight, layer_norm_weight, ln_bias: ln(rms(x, weight), layer_norm_weight,
                                                                                   ln_bias)),
    ("norm of each row", lambda x: (x * x).sum(-1).sqrt()),
    ("l2 norm over the last dim", lambda x: x.norm(dim=-1)),
    ("mean over dim 1", lambda x: x.mean(1)),
    ("var over dim 0 unbiased", lambda x: x.var(0)),
    ("sqrt of x squared plus y squared", lambda x, y: torch.hypot(x, y)),
    ("leaky relu 0.2 and add bias", lambda x, bias: F.leaky_relu(x, 0.2) + bias),
    ("divide by temperature then softmax", lambda x, temperature: torch.softmax(x / temperature, -1)),
    # a batch written before the reader was run on it (first run: 17 correct, 13 refused, 0 wrong)
    ("apply swish to the sum of x and y", lambda x, y: F.silu(x + y)),
    ("relu after adding bias", lambda x, bias: F.relu(x + bias)),
    ("compute softmax along the last axis", lambda x: torch.softmax(x, -1)),
    ("multiply the input by 0.5 and then apply tanh", lambda x: torch.tanh(0.5 * x)),
    ("elementwise max of x and 0", lambda x: x.clamp_min(0)),
    ("gelu activation followed by layer norm", lambda x, weight, ln_bias: ln(F.gelu(x), weight, ln_bias)),
    ("rmsnorm with epsilon 1e-5 then multiply by gate", lambda x, weight, gate: rms(x, weight, 1e-5) * gate),
    ("log of softmax", lambda x: torch.log_softmax(x, -1)),
    ("sigmoid(x) * x", lambda x: F.silu(x)),
    ("square the input then take the mean over the last dim", lambda x: (x * x).mean(-1)),
    ("variance of each row (population)", lambda x: x.var(-1, unbiased=False)),
    ("a minus b squared", lambda a, b: a - b * b),
    ("(a - b) squared", lambda a, b: (a - b) ** 2),
    ("mean squared error between x and target", lambda x, target: F.mse_loss(x, target)),
    ("add residual and apply layer norm", lambda x, residual, weight, ln_bias: (ln(x + residual, weight, ln_bias),
                                                                            x + residual)),
    ("exp(x - max(x))", lambda x: torch.exp(x - x.max())),
    ("normalize x along the last dimension", lambda x: F.normalize(x, dim=-1)),
    ("hard sigmoid then multiply with x", lambda x: F.hardsigmoid(x) * x),
    ("clip x to the range 0 to 1", lambda x: x.clamp(0, 1)),
    ("softplus then tanh then multiply by x", lambda x: torch.tanh(F.softplus(x)) * x),
    ("reglu of a and b", lambda a, b: F.relu(a) * b),
    ("matrix multiply a and b then add bias", lambda a, b, bias: a @ b + bias),
    ("row-wise logsumexp", lambda x: torch.logsumexp(x, -1)),
    ("cumulative sum along rows", lambda x: torch.cumsum(x, -1)),
    ("negative log likelihood loss", lambda logp, target: F.nll_loss(logp, target)),
    ("x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)", lambda x: rms(x, None, 1e-6)),
    ("leaky relu with negative slope of 0.1", lambda x: F.leaky_relu(x, 0.1)),
    ("add two tensors and take the relu", lambda a, b: F.relu(a + b)),
    ("1 / (1 + exp(-x))", lambda x: torch.sigmoid(x)),
    ("subtract mean and divide by std per row", lambda x: (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)),
    # a second batch written before running it (first run: 20 correct, 9 refused, 1 wrong: "geglu with exact
    # gelu" was read as geglu then gelu; a word restating the op after a modifier is now part of it)
    ("swiglu activation", lambda a, b: F.silu(a) * b),
    ("gelu(x) * sigmoid(y)", lambda x, y: F.gelu(x) * torch.sigmoid(y)),
    ("add the bias and apply the sigmoid function", lambda x, bias: torch.sigmoid(x + bias)),
    ("sum over the last dimension followed by sqrt", lambda x: x.sum(-1).sqrt()),
    ("relu6 of x plus 3", lambda x: F.relu6(x + 3)),
    ("hard swish activation function", lambda x: F.hardswish(x)),
    ("x minus the mean of x", lambda x: x - x.mean()),
    ("batched matrix multiplication", lambda a, b: torch.bmm(a, b)),
    ("softmax over dimension 1", lambda x: torch.softmax(x, 1)),
    ("multiply a by b and add c", lambda a, b, c: a * b + c),
    ("tanh of the product of a and b", lambda a, b: torch.tanh(a * b)),
    ("the elu of x with alpha 1.5", lambda x: F.elu(x, 1.5)),
    ("rms norm over the last dim with eps 1e-6", lambda x, weight: rms(x, weight, 1e-6)),
    ("l1 loss", lambda x, target: F.l1_loss(x, target)),
    ("divide x by 2 and then apply gelu", lambda x: F.gelu(x / 2)),
    ("scale then add bias then relu", lambda x, scale, bias: F.relu(x * scale + bias)),
    ("max over rows", lambda x: x.amax(-1)),
    ("minimum of each row", lambda x: x.amin(-1)),
    ("absolute value then sum per row", lambda x: x.abs().sum(-1)),
    ("exponential linear unit", lambda x: F.elu(x)),
    ("sigmoid linear unit", lambda x: F.silu(x)),
    ("softmax(x / temperature)", lambda x, temperature: torch.softmax(x / temperature, -1)),
    ("y = torch.tanh(x) * 0.5 + 0.5", lambda x: torch.tanh(x) * 0.5 + 0.5),
    ("clamp x between -3 and 3 then tanh", lambda x: torch.tanh(x.clamp(-3, 3))),
    ("mean of the squares of each row", lambda x: (x * x).mean(-1)),
    ("subtract b from a then square", lambda a, b: (a - b) ** 2),
    ("layer normalization without affine parameters", lambda x: ln(x)),
    ("log softmax over the last dim then negate", lambda x: -torch.log_softmax(x, -1)),
    ("geglu with exact gelu", lambda a, b: F.gelu(a) * b),
    ("x * y + z", lambda x, y, z: x * y + z),
    # a third batch written before running it (first run: 17 correct, 12 refused, 1 wrong: "squared relu" was
    # read as relu(x ** 2); an adjective "squared" before an op now applies to its result)
    ("performs a relu activation", lambda x: F.relu(x)),
    ("simple model that performs a matrix multiplication", lambda a, b: a @ b),
    ("applies softmax to the input", lambda x: torch.softmax(x, -1)),
    ("computes the sum reduction over dim 1", lambda x: x.sum(1)),
    ("argmax over the last dim", lambda x: x.argmax(-1)),
    ("mean reduction over dimension 0", lambda x: x.mean(0)),
    ("computes the l2 norm of each row and divides by it", lambda x: x / x.norm(dim=-1, keepdim=True)),
    ("applies a hardtanh with min -0.5 and max 0.5", lambda x: F.hardtanh(x, -0.5, 0.5)),
    ("smooth l1 loss between predictions and targets", lambda x, target: F.smooth_l1_loss(x, target)),
    ("cosine similarity of a and b", lambda a, b: F.cosine_similarity(a, b, dim=-1)),
    ("silu of a times b", lambda a, b: F.silu(a * b)),
    ("a * silu(b)", lambda a, b: a * F.silu(b)),
    ("add bias, then gelu with tanh approximation, then multiply by gate",
     lambda x, bias, gate: F.gelu(x + bias, approximate="tanh") * gate),
    ("log(1 + exp(x))", lambda x: F.softplus(x)),
    ("product over the last dim", lambda x: x.prod(-1)),
    ("min over the last dimension", lambda x: x.amin(-1)),
    ("x divided by its l2 norm", lambda x: x / x.norm()),
    ("squared relu", lambda x: F.relu(x) ** 2),
    ("take the reciprocal of x", lambda x: 1 / x),
    ("compute e to the x", lambda x: torch.exp(x)),
    ("standard deviation over all elements", lambda x: x.std()),
    ("scale x by 0.1 then add y", lambda x, y: 0.1 * x + y),
    ("rmsnorm(x) * (1 + w)", lambda x, w: rms(x) * (1 + w)),
    ("layer_norm(x) then silu", lambda x, weight, ln_bias: F.silu(ln(x, weight, ln_bias))),
    ("bias gelu", lambda x, bias: F.gelu(x + bias)),
    ("softmax of scaled logits", lambda logits, scale: torch.softmax(logits * scale, -1)),
    ("tanh(x) + tanh(y)", lambda x, y: torch.tanh(x) + torch.tanh(y)),
    ("x clamped to [0, 6]", lambda x: x.clamp(0, 6)),
    ("kl divergence with batchmean reduction",
     lambda logp, target: F.kl_div(logp, target, reduction="batchmean")),
    # a fourth batch written before running it (first run: 20 correct, 10 refused, 0 wrong)
    ("apply mish", lambda x: F.mish(x)),
    ("residual connection followed by rmsnorm", lambda x, residual, weight: rms(x + residual, weight)),
    ("y = relu(x @ w + b)", lambda x, w, b: F.relu(x @ w + b)),
    ("add x and y then multiply by z", lambda x, y, z: (x + y) * z),
    ("softplus with beta 0.5 and threshold 10", lambda x: F.softplus(x, 0.5, 10.0)),
    ("gelu approximated with tanh", lambda x: F.gelu(x, approximate="tanh")),
    ("swish activation then layer norm", lambda x, weight, ln_bias: ln(F.silu(x), weight, ln_bias)),
    ("compute the maximum value of each row", lambda x: x.amax(-1)),
    ("divide by the square root of 64", lambda x: x / 8),
    ("x * 0.5 * (1 + erf(x / sqrt(2)))", lambda x: F.gelu(x)),
    ("mean absolute error", lambda x, target: F.l1_loss(x, target)),
    ("sigmoid then multiply by 2 then subtract 1", lambda x: torch.sigmoid(x) * 2 - 1),
    ("rms norm with no weight and eps 1e-5", lambda x: rms(x, None, 1e-5)),
    ("elementwise multiply a and b", lambda a, b: a * b),
    ("hardtanh with min 0 and max 1", lambda x: x.clamp(0, 1)),
    ("log of the sum of exponentials per row", lambda x: torch.logsumexp(x, -1)),
    ("normalize each row to unit length", lambda x: F.normalize(x, dim=-1)),
    ("add 3, clamp to [0, 6], divide by 6", lambda x: (x + 3).clamp(0, 6) / 6),
    ("negative of the log softmax", lambda x: -torch.log_softmax(x, -1)),
    ("bce loss with logits", lambda logits, target: F.binary_cross_entropy_with_logits(logits, target)),
    ("a @ b.T", lambda a, b: a @ b.T),
    ("cube x", lambda x: x ** 3),
    ("x cubed", lambda x: x ** 3),
    ("softmax over columns", lambda x: torch.softmax(x, 0)),
    ("sum of squares over the last dim", lambda x: (x * x).sum(-1)),
    ("tanh then scale by 2", lambda x: 2 * torch.tanh(x)),
    ("leaky relu (slope 0.3) after matmul", lambda a, b: F.leaky_relu(a @ b, 0.3)),
    ("relu on a + b", lambda a, b: F.relu(a + b)),
    ("silu-and-mul", lambda a, b: F.silu(a) * b),
    ("compute y = x * sigmoid(1.702 * x)", lambda x: x * torch.sigmoid(1.702 * x)),
    # a fifth batch of 20 written before running it (first run: 12 correct, 6 refused, 2 wrong: "fused add and
    # rms norm" added a + b and returned no residual, "add bias and residual then gelu" left out x; the plain
    # add next to a norm is now the residual add, and 'and' after a noun adds both to the input)
    ("fused add and rms norm", lambda x, residual, weight: (rms(x + residual, weight), x + residual)),
    ("softmax with temperature", lambda x, temperature: torch.softmax(x / temperature, -1)),
    ("logits divided by temperature then log softmax",
     lambda logits, temperature: torch.log_softmax(logits / temperature, -1)),
    ("relu then square then mean over the last dim", lambda x: (F.relu(x) ** 2).mean(-1)),
    ("x + y then layernorm with eps 1e-6", lambda x, y, weight, ln_bias: ln(x + y, weight, ln_bias, 1e-6)),
    ("per-row max subtracted from x then exp", lambda x: torch.exp(x - x.amax(-1, keepdim=True))),
    ("gelu of the bias added input", lambda x, bias: F.gelu(x + bias)),
    ("add bias and residual then gelu", lambda x, bias, residual: F.gelu(x + bias + residual)),
    ("multiply x by the sigmoid of y", lambda x, y: x * torch.sigmoid(y)),
    ("silu of a, times b", lambda a, b: F.silu(a) * b),
    ("elementwise minimum of a and b", lambda a, b: torch.minimum(a, b)),
    ("softmax then take the max of each row", lambda x: torch.softmax(x, -1).amax(-1)),
    ("scale by 1/sqrt(64) then softmax", lambda x: torch.softmax(x / 8, -1)),
    ("dequantize int8 with per-column scale", lambda x, scale: x.float() * scale),
    ("cast to bf16 after relu", lambda x: F.relu(x).to(torch.bfloat16)),
    ("rms norm without weight then multiply by 2", lambda x: rms(x) * 2),
    ("log(sigmoid(x))", lambda x: F.logsigmoid(x)),
    ("exp of x then divide by its row sum", lambda x: torch.exp(x) / torch.exp(x).sum(-1, keepdim=True)),
    ("sum of x over the last two dims", lambda x: x.sum((-2, -1))),
    # a sixth batch of 20 written before running it (first run: 12 correct, 5 refused, 1 misread: "a squared
    # plus b squared" took 'a' for an article; and one expectation of ours was wrong: "scale by temperature"
    # multiplies)
    ("relu then add residual", lambda x, residual: F.relu(x) + residual),
    ("softmax of x plus mask", lambda x, mask: torch.softmax(x + mask, -1)),
    ("tanh(a) * sigmoid(b)", lambda a, b: torch.tanh(a) * torch.sigmoid(b)),
    ("sigmoid of the difference of a and b", lambda a, b: torch.sigmoid(a - b)),
    ("mish then add bias", lambda x, bias: F.mish(x) + bias),
    ("multiply by scale then clamp to [-5, 5]", lambda x, scale: (x * scale).clamp(-5, 5)),
    ("average over all elements", lambda x: x.mean()),
    ("exp minus one", lambda x: torch.expm1(x)),
    ("l2 normalize then scale by temperature", lambda x, temperature: F.normalize(x, dim=-1) * temperature),
    ("apply gelu, then add residual, then layer norm",
     lambda x, residual, weight, ln_bias: ln(F.gelu(x) + residual, weight, ln_bias)),
    ("hardswish of x divided by 6", lambda x: F.hardswish(x / 6)),
    ("1 - sigmoid(x)", lambda x: 1 - torch.sigmoid(x)),
    ("log1p of abs x", lambda x: torch.log1p(x.abs())),
    ("max(x, 0) + min(x, 0) * 0.1", lambda x: x.clamp_min(0) + x.clamp_max(0) * 0.1),
    ("softmax along dim -2", lambda x: torch.softmax(x, -2)),
    ("std of each column", lambda x: x.std(0)),
    ("a squared plus b squared", lambda a, b: a * a + b * b),
    ("silu of x times sigmoid of y", lambda x, y: F.silu(x * torch.sigmoid(y))),
    # requests a person may write that the reader does not handle yet: they must be refused, never misread
    ("divide each row by its sum", lambda x: x / x.sum(-1, keepdim=True)),
    ("sum of a and b then relu", lambda a, b: F.relu(a + b)),
    ("apply gelu to the sum of x and bias", lambda x, bias: F.gelu(x + bias)),
    ("the mean of x over the last dim", lambda x: x.mean(-1)),
    ("take the log of the softmax", lambda x: torch.log_softmax(x, -1)),
    ("elementwise product of a and b", lambda a, b: a * b),
    ("square of relu", lambda x: F.relu(x) ** 2),
]

REFUSED = [
    "layer norm over the last 3 dims",  # the 3 is a count of dims, never an eps
    "relu with eps 1e-5",  # relu has no eps
    "gelu 0.5",  # a number next to an op with no such parameter
    "softmax 3",
    "frobnicate the tensor",
    "naïve softmax",  # non-ASCII letters stay in their (unknown) word
    "load models/llama.py and apply relu",  # a path is not a division
    "relu a + b",  # words before a formula that do not name it
    "sigmoid gating a*tanh(b)",
    "threshold",  # needs its two numbers
    "clamp 5",  # one bare bound: min or max?
    "add x",  # x plus what?
    "sum and mean",  # a mean of one number: two outputs were probably meant
    "softmax with temperature 0.5",
    "cast",
    "relu then dropout",
    "gelu then dropout",
    "masked softmax",  # which mask? never a plain softmax
    "rmsnorm then swiglu",  # which halves does swiglu gate? refused, not guessed
    "y = (x - mean) / sqrt(var + eps)",  # mean and var are words here, not inputs: refused, not guessed
    "relu gating",
    "rotary embedding",
    "y = __import__('os').system('ls')",
    "y = open('f').read()",
    "y = x.cuda()",
    "y = lambda: 0",
    "y = x * 2 ** 10 ** 10",  # refused before it runs, not computed
    "y = x + torch.ones(10 ** 12)",
    "",
]


def _compare(got, want) -> str:
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    if len(got) != len(want):
        return f"{len(got)} outputs, expected {len(want)}"
    for k, (g, w) in enumerate(zip(got, want)):
        w = torch.as_tensor(w)
        if g.shape != w.shape:
            return f"output {k}: shape {tuple(g.shape)}, expected {tuple(w.shape)}"
        if not torch.allclose(g.double(), w.double(), rtol=1e-6, atol=1e-7, equal_nan=True):
            return f"output {k}: max difference {(g.double() - w.double()).abs().nan_to_num().max().item():.3g}"
    return ""


def outcome(request: str, expected) -> tuple[str, str]:
    """('correct' | 'refused' | 'wrong', why)."""
    try:
        ref = to_reference(request)
    except ComposeError as exc:
        return "refused", str(exc)
    names = [i.name for i in ref.inputs]
    wanted = list(inspect.signature(expected).parameters)
    if sorted(names) != sorted(wanted):
        return "wrong", f"inputs {names}, expected {wanted}"
    fn = ref.function()
    for seed in SEEDS:
        for dims in ref.test_shapes:
            args = sample_inputs(ref, dims, seed, torch.float64)
            why = _compare(fn(*args), expected(**dict(zip(names, args))))
            if why:
                return "wrong", f"seed {seed}, dims {dims}: {why}\n{ref.show()}"
    return "correct", ""


def test_request_set_score():
    assert len(CASES) >= 80 and len({r for r, _ in CASES}) == len(CASES)
    results = {r: outcome(r, e) for r, e in CASES}
    correct = [r for r, (o, _) in results.items() if o == "correct"]
    wrong = {r: why for r, (o, why) in results.items() if o == "wrong"}
    refused = {r: why for r, (o, why) in results.items() if o == "refused"}
    print(f"\nrequest set: {len(correct)}/{len(CASES)} composed and correct "
          f"({100 * len(correct) / len(CASES):.1f}%), {len(refused)} refused, {len(wrong)} wrong")
    for r, why in refused.items():
        print(f"  refused {r!r}: {why}")
    for r, why in wrong.items():
        print(f"  WRONG {r!r}: {why}")
    assert not wrong, f"composed to something else: {list(wrong)}"
    assert not [r for r, why in refused.items() if "internal" in why], "a refusal hides a bug of the reader"
    assert len(correct) >= 0.9 * len(CASES)


@pytest.mark.parametrize("request_text", REFUSED)
def test_request_is_refused_with_one_line(request_text):
    with pytest.raises(ComposeError) as info:
        to_reference(request_text)
    assert "\n" not in str(info.value) and str(info.value)


def test_a_lexicon_that_reads_mean_as_sum_fails_the_set(monkeypatch):
    """Hostile check of the harness itself: the hand-written expectations tell mean from sum on the chosen
    inputs, so a vocabulary that maps "mean" to torch.sum is caught as wrong, not passed."""
    from kernelgen.frontends import lexicon_words
    from kernelgen.frontends.vocabulary import BY_NAME

    mean_cases = [(r, e) for r, e in CASES if r in ("mean over the last dim", "average of each row", "mean")]
    assert len(mean_cases) == 3
    assert all(outcome(r, e)[0] == "correct" for r, e in mean_cases)
    for key, (kind, value) in list(lexicon_words.TABLE.items()):
        if kind == "op" and value is BY_NAME["mean"]:
            monkeypatch.setitem(lexicon_words.TABLE, key, ("op", BY_NAME["sum"]))
    for r, e in mean_cases:
        assert outcome(r, e)[0] == "wrong", r


def test_refusal_names_the_unknown_words_and_the_closest_known_ones():
    with pytest.raises(ComposeError) as info:
        to_reference("sofmax then rleu then frobnicate")
    msg = str(info.value)
    assert "'sofmax'" in msg and "'rleu'" in msg and "'frobnicate'" in msg
    assert "did you mean" in msg and "softmax" in msg and "relu" in msg


def test_conventions_are_printed_as_notes():
    var = to_reference("row variance")
    assert any("correction=1" in n for n in var.notes)
    assert "correction=0" in to_reference("population variance of each row").source
    assert any("inputs: x [M, N], bias [N]" == n for n in to_reference("silu of x plus bias").notes)
    rms_ref = to_reference("fused rmsnorm + residual")
    assert rms_ref.outputs == ["y", "h"] and any("returned too" in n for n in rms_ref.notes)


def test_readme_lists_every_vocabulary_word():
    from pathlib import Path

    from kernelgen.frontends.vocabulary import WORDS, markdown_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [w.name for w in WORDS if f"`{w.name}`" not in readme]
    assert not missing, f"README 'The words' table lacks {missing}"
    assert markdown_table() in readme, "regenerate README's table with kernelgen.frontends.vocabulary.markdown_table()"


def test_every_vocabulary_snippet_passes_the_formula_allowlist_and_runs():
    """The words path builds its reference from the table's snippets and checks it like a user formula: a
    snippet outside the allowlist (or one that does not run) would refuse every request using that word."""
    from kernelgen.frontends.formula import parse_program
    from kernelgen.frontends.vocabulary import WORDS, Src, render

    fixed = {"threshold": {"threshold": 0.1, "value": 2.0}, "clamp": {"min": -1.0, "max": 1.0},
             "pow": {"exponent": 2.0}, "cast": {"dtype": Src("torch.float16")}}
    for w in WORDS:
        src = render(w, {o: o for o in w.operands}, fixed.get(w.name, {}))
        program = parse_program(f"y = {src}")
        assert program.inputs == list(dict.fromkeys(w.operands)), (w.name, program.inputs)
