"""Parses Prometheus text exposition from standard input with the official client's parser
(prometheus_client.parser) and prints what it found as JSON: {family: {"type": ..., "samples": [[name,
labels, value], ...]}}. Exits non-zero, with the parser's complaint, when the text does not parse."""
import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    families = {}
    for family in text_string_to_metric_families(sys.stdin.read()):
        samples = []
        for s in family.samples:
            value = s.value
            if math.isinf(value):
                value = "+Inf" if value > 0 else "-Inf"
            samples.append([s.name, s.labels, value])
        families[family.name] = {"type": family.type, "samples": samples}
    print(json.dumps(families))


main()
