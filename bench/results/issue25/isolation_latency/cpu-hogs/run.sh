#!/bin/bash
# POST /api/jobs p99 at 100/s idle, without and with two CPU-bound loops at nice 19, alternating.
cd /work/main
for pair in 1 2 3; do
  for hog in 0 1; do
    if [ $hog = 1 ]; then
      nice -n 19 python3 -c "while True: pass" & H1=$!
      nice -n 19 python3 -c "while True: pass" & H2=$!
    fi
    echo "pair $pair hog $hog" >> /tmp/hog_ab.log
    BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_q timeout 600 .venv/bin/python -m bench --only latency --runs 1 --out /tmp/hog_ab_${pair}_${hog} 2>&1 | grep -E "POST /api/jobs:|critical p95|enqueue->start" >> /tmp/hog_ab.log
    if [ $hog = 1 ]; then kill $H1 $H2; wait $H1 $H2 2>/dev/null; fi
  done
done
echo done >> /tmp/hog_ab.log
