"""triton_bytes reads whole-tensor loads and stores off inductor's output code (a synthetic listing in its format: the
code generation itself needs the triton package, which `make triton-bytes` installs and the tests do not)."""

import pytest

from experiments import triton_bytes

LISTING = """
triton_poi_fused_0 = async_compile.triton('triton_poi_fused_0', '''
def triton_poi_fused_0(in_ptr0, in_ptr1, in_ptr2, out_ptr0, out_ptr1, xnumel, XBLOCK : tl.constexpr):
    xnumel = 10000000
    x0 = xindex
    tmp0 = tl.load(in_ptr0 + (x0), xmask)
    tmp1 = tl.load(in_ptr1 + (0))
    tmp2 = tl.load(in_ptr1 + (x0), xmask)
    tmp3 = tl.load(in_ptr2 + (x0), xmask)
    tl.store(out_ptr0 + (x0), tmp0, xmask)
    tl.store(out_ptr1 + (x0), tmp2, xmask)
''', device_str='cuda')
triton_red_fused_1 = async_compile.triton('triton_red_fused_1', '''
def triton_red_fused_1(in_ptr0, in_ptr1, out_ptr0, xnumel, r0_numel, XBLOCK : tl.constexpr, R0_BLOCK : tl.constexpr):
    xnumel = 1000
    r0_numel = 10000
    for r0_offset in tl.range(0, r0_numel, R0_BLOCK):
        tmp0 = tl.load(in_ptr0 + (r0_1 + 10000*x0), r0_mask & xmask, eviction_policy='evict_first', other=0.0)
        tmp1 = tl.load(in_ptr1 + (r0_1 + 10000*x0), r0_mask & xmask, eviction_policy='evict_first', other=0.0)
    tl.store(out_ptr0 + (x0), tmp3, xmask)
''', device_str='cuda')
triton_per_fused_2 = async_compile.triton('triton_per_fused_2', '''
def triton_per_fused_2(in_ptr0, out_ptr0, xnumel, r0_numel, XBLOCK : tl.constexpr):
    xnumel = 1
    r0_numel = 1000
    tmp0 = tl.load(in_ptr0 + (r0_0), r0_mask, eviction_policy='evict_first', other=0.0)
    tl.store(out_ptr0 + (tl.full([1, 1], 0, tl.int32)), tmp4, None)
''', device_str='cuda')

class Runner:
    def call(self, args):
        triton_poi_fused_0.run(arg0_1, arg1_1, arg2_1, buf0, buf1, 10000000, stream=raw_stream0)
        triton_red_fused_1.run(arg0_1, buf0, buf2, 1000, 10000, stream=raw_stream0)
        triton_per_fused_2.run(buf2, buf3, 1, 1000, stream=raw_stream0)
        triton_poi_fused_0.run(arg3_1, arg4_1, arg5_1, buf4, buf5, 10000000, stream=raw_stream0)
        return ()
"""


def test_whole_tensor_accesses_of_each_kernel():
    """A pointwise kernel counts its x-indexed accesses (not the scalar load); a reduction its r0-indexed ones (not
    the per-row store); a second stage over 1000 partial sums none."""
    assert triton_bytes.kernel_accesses(LISTING) == {"triton_poi_fused_0": (3, 2), "triton_red_fused_1": (2, 0),
                                                     "triton_per_fused_2": (0, 0)}


def test_traffic_counts_every_launch():
    assert triton_bytes.launches(LISTING) == ["triton_poi_fused_0", "triton_red_fused_1", "triton_per_fused_2",
                                              "triton_poi_fused_0"]
    traffic = triton_bytes.graph_traffic(LISTING, tensors=2)
    assert traffic == dict(launches=4, loads=8, stores=4, bytes_per_element=pytest.approx(4 * 12 / 2))


def test_a_listing_without_a_wrapper_is_an_error():
    with pytest.raises(ValueError):
        triton_bytes.launches("triton_poi_fused_0 = async_compile.triton('x', '''''')")
