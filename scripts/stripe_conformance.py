#!/usr/bin/env python3
"""Checks every request sent to the Stripe API against Stripe's published API.

The reference is Stripe's own Python library (PyPI `stripe`), which is generated from
Stripe's OpenAPI specification: each service method names its HTTP method, its path
template and a TypedDict of the parameters that operation accepts (nested objects are
TypedDicts too). A request passes when its method and path match an operation and every
parameter it sent, at every level of nesting, is one that operation accepts.

Usage::

    python3 scripts/stripe_conformance.py REQUEST_LOG [--min-requests N]

REQUEST_LOG holds one JSON object per line with `method`, `path` and `params` (a flat
dict of form or query keys such as `metadata[saas_invoice]`), as written by
scripts/localstripe_faithful.py when LOCALSTRIPE_REQUEST_LOG is set. Prints one line per
distinct operation seen, then `N passed, N failed`, and exits 1 on any failure.
"""

import argparse
import collections
import glob
import importlib
import json
import os
import re
import sys
import typing

try:
    import stripe
    import stripe.params as stripe_params
except ImportError:  # pragma: no cover - setup error
    sys.exit('the stripe package is not installed: pip install stripe')

from typing_extensions import NotRequired, Required, is_typeddict

SERVICE_CALL = re.compile(
    r'params:\s*Optional\[\s*"(?P<params>\w+)"\s*\]'
    r'.*?self\._request\(\s*"(?P<method>get|post|delete)",\s*"(?P<path>/v[12]/[^"]+)"',
    re.S)


def operations():
    """(METHOD, path regex, template, params class name) for every operation."""
    root = os.path.dirname(stripe.__file__)
    found = {}
    for service in glob.glob(os.path.join(root, '**', '*_service.py'), recursive=True):
        source = open(service, encoding='utf-8').read()
        # One match per method body: split on definitions first.
        for body in re.split(r'\n\s*(?:async\s+)?def ', source):
            match = SERVICE_CALL.search(body)
            if not match:
                continue
            template = match['path']
            pattern = '^' + re.sub(r'\\\{\w+\\\}', '[^/]+', re.escape(template)) + '$'
            key = (match['method'].upper(), template)
            found[key] = (re.compile(pattern), match['params'])
    # Literal paths before templated ones, so that /v1/invoices/upcoming is not {invoice}.
    return sorted(((m, p, t, c) for (m, t), (p, c) in found.items()),
                  key=lambda op: op[2].count('{'))


def params_class(name):
    return getattr(stripe_params, name, None) or _search_params_module(name)


def _search_params_module(name):
    snake = re.sub(r'(?<!^)(?=[A-Z])', '_', name).lower()
    for module in ('stripe.params._' + snake,):
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    return None


ANY = object()  # a type this check cannot resolve: anything below it is accepted


def _split_union(text):
    """Top-level alternatives of `A|B[C|D]`."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == '['
        depth -= ch == ']'
        if ch == '|' and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def _resolve(owner, hint):
    """The structured type behind an annotation of the TypedDict `owner`: unwraps
    NotRequired/Required, string and forward references, Optional and the `Literal['']`
    alternative Stripe offers for unsetting a value."""
    namespace = vars(sys.modules[owner.__module__])
    while True:
        origin = typing.get_origin(hint)
        if origin in (NotRequired, Required):
            hint = typing.get_args(hint)[0]
        elif isinstance(hint, (str, typing.ForwardRef)):
            text = hint if isinstance(hint, str) else hint.__forward_arg__
            options = [o for o in _split_union(text)
                       if not o.startswith('Literal[') and o != 'None'] or ['str']
            try:
                hint = eval(options[0], namespace)  # noqa: S307 - the library's own text
            except NameError:
                return ANY
        elif origin is typing.Union:
            args = [a for a in typing.get_args(hint)
                    if a is not type(None) and typing.get_origin(a) is not typing.Literal]
            hint = args[0] if args else str
        else:
            return hint


def _annotations(cls):
    merged = {}
    for base in reversed(cls.__mro__):
        merged.update(getattr(base, '__annotations__', {}))
    return merged


def check_key(cls, parts):
    """None when the nested key `parts` (['invoice_settings', 'default_payment_method'])
    is accepted by the TypedDict `cls`, else why not."""
    hints = _annotations(cls)
    head, rest = parts[0], parts[1:]
    if head not in hints:
        return 'unknown parameter %r' % head
    owner, hint = cls, _resolve(cls, hints[head])
    while rest:
        if hint is ANY:
            return None
        origin = typing.get_origin(hint)
        if origin in (list, typing.List):
            if not (rest[0] == '' or rest[0].isdigit()):
                return 'list %r indexed by %r' % (head, rest[0])
            hint, rest = _resolve(owner, typing.get_args(hint)[0]), rest[1:]
            continue
        if origin in (dict, typing.Dict):
            # Free-form maps: metadata[anything].
            return None
        if is_typeddict(hint):
            return check_key(hint, rest)
        return '%r is not an object, but %r was sent' % (head, '[' + ']['.join(rest) + ']')
    return None


def split_key(key):
    head, _, tail = key.partition('[')
    parts = [head]
    if tail:
        parts.extend(tail.rstrip(']').split(']['))
    return parts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('log')
    parser.add_argument('--min-requests', type=int, default=0,
                        help='fail when the log holds fewer requests (a log that was '
                             'never written would otherwise pass)')
    args = parser.parse_args(argv)

    ops = operations()
    seen = collections.Counter()
    failures = collections.Counter()
    passed = 0
    with open(args.log, encoding='utf-8') as log:
        for line in log:
            line = line.strip()
            if not line:
                continue
            request = json.loads(line)
            method, path = request['method'].upper(), request['path'].split('?')[0]
            op = next((o for o in ops if o[0] == method and o[1].match(path)), None)
            if op is None:
                failures['%s %s: no such operation in Stripe\'s API' % (method, path)] += 1
                continue
            cls = params_class(op[3])
            if cls is None:
                failures['%s %s: parameters %s not found' % (method, op[2], op[3])] += 1
                continue
            problems = [
                '%s (%s)' % (key, why) for key in sorted(request.get('params') or {})
                for why in [check_key(cls, split_key(key))] if why
            ]
            if problems:
                failures['%s %s: %s' % (method, op[2], '; '.join(problems))] += 1
            else:
                seen['%s %s' % (method, op[2])] += 1
                passed += 1
    for operation, count in sorted(seen.items()):
        print('ok    %5d  %s' % (count, operation))
    for failure, count in sorted(failures.items()):
        print('FAIL  %5d  %s' % (count, failure))
    failed = sum(failures.values())
    print('Stripe requests checked against stripe-python %s (API %s)'
          % (stripe.VERSION, stripe.api_version))
    if passed + failed < args.min_requests:
        print('only %d requests logged, %d expected at least: was the log written?'
              % (passed + failed, args.min_requests))
        failed += 1
    print('conformance: %d passed, %d failed' % (passed, failed))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
