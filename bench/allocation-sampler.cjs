// Preloaded (node --require) by bench/allocations.mjs: V8's sampling heap profiler, switched by signals so only
// the measured load is sampled. The first SIGUSR2 starts sampling, the second stops it and writes the profile to
// ALLOCATION_PROFILE (written beside it, then renamed: whoever waits for the file reads it whole). Unlike `node --heap-prof`, it keeps the samples of objects the garbage collector has already
// freed: what a request allocates and drops is what sets how often V8 scavenges.
'use strict';
const fs = require('node:fs');
const inspector = require('node:inspector');

const session = new inspector.Session();
session.connect();
let sampling = false;
process.on('SIGUSR2', () => {
  if (!sampling) {
    sampling = true;
    session.post('HeapProfiler.startSampling', {
      samplingInterval: Number(process.env.ALLOCATION_SAMPLING_INTERVAL || 4096),
      includeObjectsCollectedByMajorGC: true,
      includeObjectsCollectedByMinorGC: true,
    });
    return;
  }
  session.post('HeapProfiler.stopSampling', (error, result) => {
    if (error) throw error;
    const file = process.env.ALLOCATION_PROFILE;
    fs.writeFileSync(`${file}.partial`, JSON.stringify(result.profile));
    fs.renameSync(`${file}.partial`, file);
  });
});
