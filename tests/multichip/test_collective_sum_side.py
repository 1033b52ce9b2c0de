"""An all-reduce whose owner's add fits at no start as first planned (8 chips, [8, 4096]: the 8 partials' reads
fill one direction's 32 streams and each meets the sum's write) is planned again with the sum's store on its
partials' side (collectives._Scheduler): it compiles, and every chip ends with the reference sum."""
import numpy as np

from lpusim.multichip.collectives import allreduce, reference_allreduce


def test_allreduce_8_chips_8_rows_4096_compiles_and_sums():
    p = allreduce(8, 8, 4096)
    x = p.random_inputs(3)
    r = p.run(x)
    ref = reference_allreduce(x)
    assert all(np.array_equal(o, ref) for o in r.outputs)
    assert r.cycles == p.predicted_cycles
