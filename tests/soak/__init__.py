"""
The soak (issue 12): ten swarm peers on real sockets on 127.0.0.1 looping
join / leave / connect / disconnect / tunnel traffic for a while, with the
process's RSS and open file descriptors sampled, then everything stopped and
checked (no growth, no fd and no timer left behind, no error logged, work
done).

* :mod:`tests.soak.workload`: the workload and its checks
  (:class:`~tests.soak.workload.Soak`), shared by the suite and the runner;
* ``python3 -m tests.soak --minutes 10``: the by-hand runner (a table of
  samples and the verdict; exit status 1 when a check fails);
* ``tests/test_soak.py``: one minute of it in the suite.
"""
