/* The abseil call behind goplugin's `abseil-cpufreq` feature (src/sys.rs).
 *
 * Where the kernel does not export the CPU's TSC frequency, abseil (inside
 * gRPC's core) measures it, sleeping 1, 2, ... ms, the first time two
 * threads queue on one of its mutexes, and does so holding that mutex's
 * spinlock: whichever call meets such contention first stalls for about
 * 3.5 ms (a host's Kill(), in some runs). Calling abseil's
 * NominalCPUFrequency() early, on a thread of its own, moves that.
 *
 * The function is C++ with abseil's versioned name (the abseil that
 * grpcio-sys 0.13 builds, lts_2023_01_25). It is referenced weakly: with
 * another abseil the link still succeeds, the address is null and nothing
 * is called. */

extern double goplugin_absl_nominal_cpu_frequency(void)
    __asm__("_ZN4absl12lts_2023012513base_internal19NominalCPUFrequencyEv")
    __attribute__((weak));

/* 1 when abseil's function was found and called, 0 when it is absent. */
int goplugin_measure_cpu_frequency(void) {
    if (!goplugin_absl_nominal_cpu_frequency) {
        return 0;
    }
    (void)goplugin_absl_nominal_cpu_frequency();
    return 1;
}
