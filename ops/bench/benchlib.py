"""What every benchmark script records about the machine it ran on (imported by the scripts beside it)."""
import os
import platform


def load_avg():
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
