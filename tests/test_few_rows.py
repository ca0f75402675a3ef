"""The few-rows product kernels (csrc/few_rows) against their plain-PyTorch references."""

import pytest
import torch

from crossgap_qdrant import ops


def _isas():
    """The instruction sets this CPU runs, widest first (the kernels are compiled for each)."""
    widest = ops.few_rows_isa()
    order = ["avx512", "avx2", "baseline"]
    return order[order.index(widest):] if widest in order else [widest]


@pytest.fixture(params=_isas())
def isa(request):
    """Runs a test with the kernels of each instruction set the CPU runs, then restores the widest."""
    widest = ops.few_rows_isa()
    assert ops.few_rows_isa(request.param) == request.param
    yield request.param
    ops.few_rows_isa(widest)


def _operands(m, n, k, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen) * k**-0.5,
            torch.randn(m, n, generator=gen))


def _close_to_float64(got, want64, want32):
    """Within a few float32 roundings of the float64 product: no worse than 4x BLAS's own float32 error."""
    assert got.dtype == torch.float32 and got.shape == want64.shape and got.is_contiguous()
    bound = 4 * (want32.double() - want64).abs().max().item() + 1e-5
    assert (got.double() - want64).abs().max().item() <= bound


# Row counts across the fixed-size kernels (1..8) and the chunking past them; K and N with and without a
# vector tail (16 lanes) and a row-group tail (4 rows); several backward column blocks with a ragged last one
# (K = 1043); the tower's shapes.
SHAPES = [(1536, 512), (512, 2048), (7, 33), (4, 16), (5, 1), (1, 17), (2304, 768), (9, 1043)]


# (the op, its reference, which operand multiplies the weight: x [M, K] forward, grad [M, N] backward)
PRODUCTS = {"forward": (ops.few_rows_product, ops.few_rows_product_reference, 0),
            "backward": (ops.few_rows_product_backward, ops.few_rows_product_backward_reference, 2)}


@pytest.mark.parametrize("direction", sorted(PRODUCTS))
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 6, 7, 8, 9, 17])
@pytest.mark.parametrize("n,k", SHAPES)
def test_matches_reference(direction, m, n, k, isa):
    op, reference, operand = PRODUCTS[direction]
    operands = _operands(m, n, k, seed=m * 7 + k + n)
    a, w = operands[operand], operands[1]
    _close_to_float64(op(a, w), reference(a.double(), w.double()), reference(a, w))


def test_threads_split_the_work_without_changing_the_result():
    x, w, g = _operands(3, 1536, 2048, seed=4)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.few_rows_product(x, w), ops.few_rows_product_backward(g, w)
        torch.set_num_threads(2)
        two = ops.few_rows_product(x, w), ops.few_rows_product_backward(g, w)
    finally:
        torch.set_num_threads(threads)
    # each output element is summed by one thread in one order
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_non_contiguous_operands_and_empty_rows():
    x, w, g = _operands(4, 64, 48, seed=5)
    xt = x.T.contiguous().T  # same values, column-major
    torch.testing.assert_close(ops.few_rows_product(xt, w), ops.few_rows_product(x, w))
    wt = w.T.contiguous().T
    torch.testing.assert_close(ops.few_rows_product_backward(g, wt), ops.few_rows_product_backward(g, w))
    assert ops.few_rows_product(x[:0], w).shape == (0, 64)
    assert ops.few_rows_product_backward(g[:0], w).shape == (0, 48)


def test_opcheck():
    x, w, g = _operands(2, 40, 24, seed=6)
    torch.library.opcheck(torch.ops.crossgap.few_rows_product.default, (x, w))
    torch.library.opcheck(torch.ops.crossgap.few_rows_product_backward.default, (g, w))


@pytest.mark.parametrize("call,match", [
    (lambda x, w, g: ops.few_rows_product(x.double(), w.double()), "float32 only"),
    (lambda x, w, g: ops.few_rows_product(x[:, :5], w), "x has 5 columns but weight has 24 columns"),
    (lambda x, w, g: ops.few_rows_product_backward(g[:, :3], w), "grad has 3 columns but weight has 40 rows"),
    (lambda x, w, g: ops.few_rows_product(x, w[0]), "must be 2-D"),
])
def test_bad_arguments_name_the_problem(call, match):
    x, w, g = _operands(2, 40, 24, seed=7)
    with pytest.raises(RuntimeError, match=match):
        call(x, w, g)


def test_an_instruction_set_the_cpu_lacks_is_refused_by_name():
    with pytest.raises(RuntimeError, match="'sse9' is not one of the instruction sets this CPU runs: "):
        ops.few_rows_isa("sse9")
    assert ops.few_rows_isa() == _isas()[0]
