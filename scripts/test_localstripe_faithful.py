#!/usr/bin/env python3
"""Self-check of scripts/localstripe_faithful.py against a running instance.

Exercises exactly the Stripe calls the billing service makes (invoices it
composes itself, without subscriptions) and checks the answers against the
behaviour the launcher documents, plus the fields its DEFAULTS table adds
(what async-stripe needs to parse a response).

It starts nothing: run the launcher first, on a port of its own, e.g.::

    LOCALSTRIPE_STATE_FILE=/tmp/ls-check.pickle \\
    LOCALSTRIPE_REQUEST_LOG=/tmp/ls-check.requests \\
        python3 scripts/localstripe_faithful.py --port 8431 \\
        --from-scratch --in-memory &
    python3 scripts/test_localstripe_faithful.py --port 8431 \\
        --request-log /tmp/ls-check.requests

Only loopback is ever contacted. Exit status 0 when every check passes.
"""

import argparse
import base64
import importlib.util
import json
import os
import sys
import traceback
import urllib.error
import urllib.parse
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = 'sk_test_x'
BASE = None          # http://127.0.0.1:PORT, set by main()
REQUEST_LOG = None   # path of the instance's LOCALSTRIPE_REQUEST_LOG
DEFAULTS = None      # the launcher's DEFAULTS table
MODULE = None        # the launcher, imported (not patched, not started)
EMAIL = 'check-%s@example.com' % uuid.uuid4().hex


class Failure(AssertionError):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------

def call(method, path, params=None):
    """(status, JSON body) of one form-encoded request, as async-stripe
    sends them."""
    status, body, _ = exchange(method, path, params)
    return status, body


def exchange(method, path, params=None, headers=None, key=None):
    """(status, JSON body, response headers) of one form-encoded request,
    with extra request `headers` and the secret key `key` (default KEY)."""
    params = list((params or {}).items())
    data = None
    url = BASE + path
    if method == 'GET':
        if params:
            url += '?' + urllib.parse.urlencode(params)
    else:
        data = urllib.parse.urlencode(params).encode('ascii')
    request = urllib.request.Request(url, data=data, method=method)
    auth = base64.b64encode(((key or KEY) + ':').encode('ascii')).decode(
        'ascii')
    request.add_header('Authorization', 'Basic ' + auth)
    if data is not None:
        request.add_header('Content-Type',
                           'application/x-www-form-urlencoded')
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return (response.status, json.loads(response.read()),
                    response.headers)
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            return error.code, json.loads(body), error.headers
        except ValueError:
            return (error.code, {'raw': body.decode('utf-8', 'replace')},
                    error.headers)


def ok(method, path, params=None):
    status, body = call(method, path, params)
    check(status == 200, '%s %s -> %s %s' % (method, path, status, body))
    assert_complete(body)
    return body


def fails(method, path, params=None, status=400):
    got, body = call(method, path, params)
    check(got == status, '%s %s -> %s (expected %s) %s'
          % (method, path, got, status, body))
    check(isinstance(body.get('error'), dict), 'no error object: %s' % body)
    return body['error']


def assert_complete(obj, where='response'):
    """Every field the launcher's DEFAULTS table adds is present."""
    if isinstance(obj, list):
        for index, item in enumerate(obj):
            assert_complete(item, '%s[%d]' % (where, index))
        return
    if not isinstance(obj, dict):
        return
    kind = obj.get('object')
    for key in (DEFAULTS.get(kind) or {}) if isinstance(kind, str) else ():
        check(key in obj, '%s (%s %s) lacks %r'
              % (where, kind, obj.get('id'), key))
    for key, value in obj.items():
        assert_complete(value, '%s.%s' % (where, key))


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------

def customer(card=None):
    """A customer, with `card` ('pm_card_visa' or a card number) as its
    invoice_settings.default_payment_method when given."""
    cus = ok('POST', '/v1/customers', {
        'email': EMAIL, 'name': 'Check', 'metadata[tenant]': 't1'})
    if card is not None:
        if card.startswith('pm_'):
            pm_id = card
        else:
            pm_id = ok('POST', '/v1/payment_methods', {
                'type': 'card', 'card[number]': card,
                'card[exp_month]': '12', 'card[exp_year]': '2030',
                'card[cvc]': '123'})['id']
        pm = ok('POST', '/v1/payment_methods/%s/attach' % pm_id,
                {'customer': cus['id']})
        ok('POST', '/v1/customers/' + cus['id'],
           {'invoice_settings[default_payment_method]': pm['id']})
    return cus['id']


def draft(cus, reference='inv-1', **extra):
    params = {
        'customer': cus, 'currency': 'usd',
        'collection_method': 'charge_automatically',
        'auto_advance': 'false',
        'pending_invoice_items_behavior': 'exclude',
        'metadata[saas_invoice]': reference,
        'description': 'Invoice ' + reference,
    }
    params.update(extra)
    return ok('POST', '/v1/invoices', params)


def item(cus, invoice, amount, reference, currency='usd'):
    return ok('POST', '/v1/invoiceitems', {
        'customer': cus, 'currency': currency, 'amount': str(amount),
        'description': 'Line ' + reference, 'invoice': invoice,
        'metadata[saas_line]': reference})


def invoice_get(invoice_id):
    return ok('GET', '/v1/invoices/' + invoice_id)


def events(kind, invoice_id):
    """The `kind` events about invoice `invoice_id` (every page of them)."""
    found, params = [], {'type': kind, 'limit': '100'}
    while True:
        page = ok('GET', '/v1/events', params)
        found += [e for e in page['data']
                  if e['data']['object'].get('id') == invoice_id]
        if not page['has_more'] or not page['data']:
            return found
        params['starting_after'] = page['data'][-1]['id']


def finalized_invoice(cus, lines, reference='inv-f'):
    inv = draft(cus, reference)
    for index, amount in enumerate(lines):
        item(cus, inv['id'], amount, '%s-%d' % (reference, index))
    return ok('POST', '/v1/invoices/%s/finalize' % inv['id'],
              {'auto_advance': 'false'})


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------

def test_create_draft_excludes_pending_items():
    cus = customer()
    pending = ok('POST', '/v1/invoiceitems', {
        'customer': cus, 'currency': 'usd', 'amount': '999',
        'description': 'pending'})
    inv = draft(cus)
    check(inv['status'] == 'draft', inv['status'])
    check(inv['lines']['data'] == [], inv['lines'])
    for key in ('subtotal', 'total', 'amount_due', 'amount_paid',
                'amount_remaining'):
        check(inv[key] == 0, '%s=%s' % (key, inv[key]))
    check(inv['currency'] == 'usd', inv['currency'])
    check(inv['auto_advance'] is False, inv['auto_advance'])
    check(inv['collection_method'] == 'charge_automatically',
          inv['collection_method'])
    check(inv['attempt_count'] == 0, inv['attempt_count'])
    check(inv['attempted'] is False, inv['attempted'])
    check(inv['metadata'] == {'saas_invoice': 'inv-1'}, inv['metadata'])
    check(inv['description'] == 'Invoice inv-1', inv['description'])
    check(inv['number'] is None, inv['number'])
    check(inv['next_payment_attempt'] is None, inv['next_payment_attempt'])
    still = ok('GET', '/v1/invoiceitems/' + pending['id'])
    check(still['invoice'] is None, 'pending item swept: %s' % still)
    # Omitted, the behaviour is `exclude` too.
    other = ok('POST', '/v1/invoices', {'customer': cus, 'currency': 'usd'})
    check(other['lines']['data'] == [], other['lines'])
    check(other['auto_advance'] is False, other['auto_advance'])
    check(ok('GET', '/v1/invoiceitems/' + pending['id'])['invoice'] is None,
          'pending item swept by a default create')
    created = events('invoice.created', inv['id'])
    check(len(created) == 1, 'invoice.created events: %d' % len(created))


def test_include_takes_pending_items():
    cus = customer()
    pending = ok('POST', '/v1/invoiceitems', {
        'customer': cus, 'currency': 'usd', 'amount': '700',
        'description': 'pending'})
    inv = draft(cus, pending_invoice_items_behavior='include')
    check([l['invoice_item'] for l in inv['lines']['data']]
          == [pending['id']], inv['lines'])
    check(inv['total'] == 700, inv['total'])
    fails('POST', '/v1/invoices', {
        'customer': cus, 'pending_invoice_items_behavior':
        'include_and_require'})


def test_items_bound_to_invoice_with_credit():
    cus = customer()
    inv = draft(cus)
    first = item(cus, inv['id'], 1500, 'l1')
    check(first['invoice'] == inv['id'], first)
    item(cus, inv['id'], -300, 'l2')
    got = invoice_get(inv['id'])
    check(got['status'] == 'draft', got['status'])
    check((got['subtotal'], got['total'], got['amount_due'])
          == (1200, 1200, 1200),
          (got['subtotal'], got['total'], got['amount_due']))
    lines = got['lines']['data']
    check([l['amount'] for l in lines] == [1500, -300], lines)
    check([l['metadata'] for l in lines]
          == [{'saas_line': 'l1'}, {'saas_line': 'l2'}], lines)
    parent = lines[0]['parent']
    check(parent['type'] == 'invoice_item_details', parent)
    check(parent['invoice_item_details']['invoice_item'] == first['id'],
          parent)
    error = fails('POST', '/v1/invoiceitems', {
        'customer': cus, 'currency': 'eur', 'amount': '1',
        'description': 'x', 'invoice': inv['id']})
    check(error['param'] == 'currency', error)
    fails('POST', '/v1/invoiceitems', {
        'customer': cus, 'currency': 'usd', 'amount': '1',
        'description': 'x', 'invoice': 'in_doesnotexist'}, status=404)


def test_finalize():
    cus = customer()
    inv = draft(cus)
    item(cus, inv['id'], 1500, 'l1')
    item(cus, inv['id'], -300, 'l2')
    done = ok('POST', '/v1/invoices/%s/finalize' % inv['id'],
              {'auto_advance': 'false'})
    check(done['status'] == 'open', done['status'])
    check((done['total'], done['amount_due'], done['amount_remaining'])
          == (1200, 1200, 1200), done)
    check(done['status_transitions']['finalized_at'], done)
    check(done['effective_at'] == done['status_transitions']['finalized_at'],
          done)
    check(isinstance(done['number'], str) and done['number'], done['number'])
    check(done['auto_advance'] is False, done['auto_advance'])
    check(done['attempt_count'] == 0, done['attempt_count'])
    check(len(events('invoice.finalized', inv['id'])) == 1,
          'no invoice.finalized event')
    error = fails('POST', '/v1/invoices/%s/finalize' % inv['id'])
    check(error['code'] == 'invoice_already_finalized', error)
    error = fails('POST', '/v1/invoiceitems', {
        'customer': cus, 'currency': 'usd', 'amount': '1',
        'description': 'late', 'invoice': inv['id']})
    check(error['code'] == 'invoice_not_editable', error)
    check(len(invoice_get(inv['id'])['lines']['data']) == 2,
          'a line was added to a finalized invoice')
    fails('POST', '/v1/invoices/in_doesnotexist/finalize', status=404)
    second = finalized_invoice(cus, [100], 'inv-n2')
    check(second['number'] != done['number'], 'invoice numbers repeat')


def test_pay_visa():
    cus = customer('pm_card_visa')
    inv = finalized_invoice(cus, [1500, -300])
    paid = ok('POST', '/v1/invoices/%s/pay' % inv['id'])
    check(paid['status'] == 'paid', paid['status'])
    check(paid['status_transitions']['paid_at'], paid)
    check(paid['amount_paid'] == 1200, paid['amount_paid'])
    check(paid['amount_remaining'] == 0, paid['amount_remaining'])
    check(paid['attempt_count'] == 1 and paid['attempted'] is True, paid)
    check(paid['auto_advance'] is False, paid['auto_advance'])
    for kind in ('invoice.paid', 'invoice.payment_succeeded'):
        check(len(events(kind, inv['id'])) == 1, 'no %s event' % kind)
    error = fails('POST', '/v1/invoices/%s/pay' % inv['id'])
    check(error['type'] == 'invalid_request_error', error)
    check('already paid' in error['message'], error)
    fails('POST', '/v1/invoices/%s/void' % inv['id'])
    # off_session (Stripe's default) is accepted.
    other = finalized_invoice(cus, [500], 'inv-off')
    check(ok('POST', '/v1/invoices/%s/pay' % other['id'],
             {'off_session': 'true'})['status'] == 'paid', 'off_session')


def test_pay_declined_then_void():
    cus = customer('4000000000000341')
    inv = finalized_invoice(cus, [2500])
    error = fails('POST', '/v1/invoices/%s/pay' % inv['id'], status=402)
    check(error['type'] == 'card_error', error)
    check(error['code'] == 'card_declined', error)
    check(error.get('decline_code'), error)
    check(str(error.get('charge', '')).startswith('ch_'), error)
    got = invoice_get(inv['id'])
    check(got['status'] == 'open', got['status'])
    check(got['attempt_count'] == 1 and got['attempted'] is True,
          (got['attempt_count'], got['attempted']))
    check(got['amount_paid'] == 0 and got['amount_remaining'] == 2500, got)
    check(len(events('invoice.payment_failed', inv['id'])) == 1,
          'no invoice.payment_failed event')
    # A second manual attempt fails alike; per the reference only automatic
    # retries add to attempt_count after the first attempt.
    fails('POST', '/v1/invoices/%s/pay' % inv['id'], status=402)
    check(invoice_get(inv['id'])['attempt_count'] == 1, 'attempt_count')
    void = ok('POST', '/v1/invoices/%s/void' % inv['id'])
    check(void['status'] == 'void', void['status'])
    check(void['status_transitions']['voided_at'], void)
    check(len(events('invoice.voided', inv['id'])) == 1,
          'no invoice.voided event')
    fails('POST', '/v1/invoices/%s/pay' % inv['id'])
    fails('POST', '/v1/invoices/%s/void' % inv['id'])


def test_void_open_never_charged_and_not_draft():
    cus = customer()
    inv = finalized_invoice(cus, [900], 'inv-v')
    void = ok('POST', '/v1/invoices/%s/void' % inv['id'])
    check(void['status'] == 'void', void['status'])
    other = draft(cus, 'inv-d')
    fails('POST', '/v1/invoices/%s/void' % other['id'])
    check(invoice_get(other['id'])['status'] == 'draft', 'draft voided')


def test_zero_and_negative_total_paid_on_finalize():
    cus = customer()
    for lines, total in (([], 0), ([500, -500], 0), ([100, -300], -200)):
        inv = finalized_invoice(cus, lines, 'inv-z%d' % len(lines))
        check(inv['status'] == 'paid', (lines, inv['status']))
        check(inv['total'] == total, (lines, inv['total']))
        check(inv['amount_due'] == 0 and inv['amount_paid'] == 0, inv)
        check(inv['status_transitions']['paid_at'], inv)
        check(inv['attempt_count'] == 0, inv['attempt_count'])
        check(len(events('invoice.paid', inv['id'])) == 1,
              'no invoice.paid event')


def test_pay_draft_finalizes_first():
    cus = customer('pm_card_visa')
    inv = draft(cus, 'inv-pd')
    item(cus, inv['id'], 800, 'l1')
    paid = ok('POST', '/v1/invoices/%s/pay' % inv['id'])
    check(paid['status'] == 'paid', paid['status'])
    check(paid['number'] and paid['status_transitions']['finalized_at'],
          paid)
    check(len(events('invoice.finalized', inv['id'])) == 1,
          'no invoice.finalized event')


def test_lines_pagination_and_list():
    cus = customer()
    inv = draft(cus, 'inv-p')
    for n in range(3):
        item(cus, inv['id'], 100 * (n + 1), 'p%d' % n)
    page = ok('GET', '/v1/invoices/%s/lines' % inv['id'], {'limit': '2'})
    check(page['has_more'] is True and len(page['data']) == 2, page)
    rest = ok('GET', '/v1/invoices/%s/lines' % inv['id'],
              {'limit': '100', 'starting_after': page['data'][-1]['id']})
    check(rest['has_more'] is False, rest)
    check([l['amount'] for l in page['data'] + rest['data']]
          == [100, 200, 300], (page, rest))
    listed = ok('GET', '/v1/invoices', {'customer': cus, 'limit': '100'})
    check([i['id'] for i in listed['data']] == [inv['id']], listed)
    check(listed['data'][0]['metadata'] == {'saas_invoice': 'inv-p'},
          listed)


def test_customers_still_work():
    cus = customer('pm_card_visa')
    got = ok('GET', '/v1/customers/' + cus)
    check(got['invoice_settings']['default_payment_method'], got)
    email = 'check-%s@example.com' % uuid.uuid4().hex
    mine = ok('POST', '/v1/customers', {'email': email})
    listed = ok('GET', '/v1/customers', {'email': email, 'limit': '100'})
    check([c['id'] for c in listed['data']] == [mine['id']], listed)
    gone = ok('DELETE', '/v1/customers/' + cus)
    check(gone.get('deleted') is True, gone)


def test_lists_follow_creates_and_deletes():
    # Lists read a per-type index kept beside the store: a deleted object
    # leaves it, a new one joins it, and the order is the store's.
    email = 'list-%s@example.com' % uuid.uuid4().hex
    made = [ok('POST', '/v1/customers', {'email': email})['id']
            for _ in range(3)]
    ok('DELETE', '/v1/customers/' + made[1])
    listed = ok('GET', '/v1/customers', {'email': email, 'limit': '100'})
    check(sorted(c['id'] for c in listed['data'])
          == sorted([made[0], made[2]]), listed)
    cus = customer()
    first, second = draft(cus, 'inv-l1'), draft(cus, 'inv-l2')
    ok('DELETE', '/v1/invoices/' + first['id'])
    listed = ok('GET', '/v1/invoices', {'customer': cus, 'limit': '100'})
    check([i['id'] for i in listed['data']] == [second['id']], listed)


def test_subscription_invoices_unchanged():
    cus = customer('pm_card_visa')
    product = ok('POST', '/v1/products', {'name': 'Check product'})
    plan = ok('POST', '/v1/plans', {
        'amount': '1000', 'currency': 'usd', 'interval': 'month',
        'product': product['id']})
    sub = ok('POST', '/v1/subscriptions', {
        'customer': cus, 'items[0][plan]': plan['id']})
    check(sub['status'] == 'active', sub['status'])
    first = invoice_get(sub['latest_invoice'])
    check(first['status'] == 'paid' and first['amount_paid'] == 1000, first)
    # POST /v1/invoices with a subscription still takes localstripe's path.
    made = ok('POST', '/v1/invoices', {
        'customer': cus, 'subscription': sub['id'],
        'metadata[kept]': 'yes'})
    check(made['subscription'] == sub['id'], made)
    check(made['metadata'] == {'kept': 'yes'}, made['metadata'])


def test_request_log():
    if REQUEST_LOG is None:
        raise Skip('no --request-log given')
    cus = customer()
    draft(cus, 'inv-log')
    with open(REQUEST_LOG, encoding='utf-8') as f:
        lines = [json.loads(line) for line in f if line.strip()]
    check(lines, 'request log is empty')
    for line in lines:
        check(set(line) == {'method', 'path', 'params'}, line)
        check(line['path'].startswith('/v1/'), line)
    creates = [l for l in lines if l['method'] == 'POST'
               and l['path'] == '/v1/invoices'
               and l['params'].get('metadata[saas_invoice]') == 'inv-log']
    check(creates, 'POST /v1/invoices not logged')
    check(creates[-1]['params']['pending_invoice_items_behavior']
          == 'exclude', creates[-1])
    gets = [l for l in lines if l['method'] == 'GET'
            and l['path'] == '/v1/events']
    check(gets and gets[-1]['params'].get('limit') == '100', gets[-1:])


def idem(method, path, params, key, api_key=None):
    """One request with `Idempotency-Key: key`."""
    return exchange(method, path, params, {'Idempotency-Key': key},
                    key=api_key)


def replayed(headers):
    return headers.get('Idempotent-Replayed') == 'true'


def test_idempotency_same_key_replays_create():
    email = 'idem-%s@example.com' % uuid.uuid4().hex
    key = uuid.uuid4().hex
    params = {'email': email, 'name': 'Idem', 'metadata[tenant]': 't1'}
    status, first, headers = idem('POST', '/v1/customers', params, key)
    check(status == 200, (status, first))
    check(not replayed(headers), 'first answer marked as a replay')
    assert_complete(first)
    status, again, headers = idem('POST', '/v1/customers', params, key)
    check(status == 200, (status, again))
    check(again == first, 'replay differs: %s vs %s' % (again, first))
    check(replayed(headers), 'no Idempotent-Replayed: true on the replay')
    # Parameter order is not part of the request's identity.
    status, third, _ = idem('POST', '/v1/customers',
                            dict(reversed(list(params.items()))), key)
    check(status == 200 and third['id'] == first['id'], (status, third))
    listed = ok('GET', '/v1/customers', {'email': email, 'limit': '100'})
    check([c['id'] for c in listed['data']] == [first['id']], listed)
    created = events('customer.created', first['id'])
    check(len(created) == 1, 'customer.created events: %d' % len(created))
    # The key is ignored on GET ("has no effect").
    status, got, headers = idem('GET', '/v1/customers/' + first['id'], {},
                                key)
    check(status == 200 and got['id'] == first['id'], (status, got))
    check(not replayed(headers), 'GET answered as a replay')
    # Keys belong to an API key: another one runs the request anew.
    status, other, _ = idem('POST', '/v1/customers', params, key,
                            api_key='sk_test_other')
    check(status == 200 and other['id'] != first['id'], (status, other))


def test_idempotency_same_key_other_request_refused():
    email = 'idem-%s@example.com' % uuid.uuid4().hex
    key = uuid.uuid4().hex
    status, first, _ = idem('POST', '/v1/customers', {'email': email}, key)
    check(status == 200, (status, first))
    for path, params in (('/v1/customers', {'email': 'x' + email}),
                         ('/v1/customers', {'email': email, 'name': 'N'}),
                         ('/v1/products', {'name': 'Idem product'})):
        status, body, headers = idem('POST', path, params, key)
        check(status == 400, (path, params, status, body))
        check(body['error']['type'] == 'idempotency_error', body)
        check(key in body['error']['message'], body)
        check(not replayed(headers), 'an idempotency_error is no replay')
    for address in (email, 'x' + email):
        listed = ok('GET', '/v1/customers', {'email': address,
                                             'limit': '100'})
        check(len(listed['data']) == (address == email), listed)
    # The original request still replays.
    status, again, headers = idem('POST', '/v1/customers', {'email': email},
                                  key)
    check(status == 200 and again['id'] == first['id'] and replayed(headers),
          (status, again))


def test_idempotency_without_key_makes_two():
    email = 'idem-%s@example.com' % uuid.uuid4().hex
    one = ok('POST', '/v1/customers', {'email': email})
    two = ok('POST', '/v1/customers', {'email': email})
    check(one['id'] != two['id'], 'no key, yet one object')
    listed = ok('GET', '/v1/customers', {'email': email, 'limit': '100'})
    check(sorted(c['id'] for c in listed['data'])
          == sorted([one['id'], two['id']]), listed)


def test_idempotency_validation_failure_not_saved():
    # "If incoming parameters fail validation [...] we don't save the
    # idempotent result [...]. You can retry these requests."
    email = 'idem-%s@example.com' % uuid.uuid4().hex
    key = uuid.uuid4().hex
    status, body, _ = idem('POST', '/v1/customers',
                           {'email': email, 'bogus': 'x'}, key)
    check(status == 400, (status, body))
    check(body['error']['type'] == 'invalid_request_error', body)
    status, made, headers = idem('POST', '/v1/customers', {'email': email},
                                 key)
    check(status == 200 and made['object'] == 'customer', (status, made))
    check(not replayed(headers), 'the fixed request was a replay')
    status, body, _ = idem('POST', '/v1/customers', {'email': email},
                           'k' * 256)
    check(status == 400 and body['error']['type']
          == 'invalid_request_error', (status, body))


def test_idempotency_replays_declined_pay():
    cus = customer('4000000000000341')
    inv = finalized_invoice(cus, [2500], 'inv-idem')
    key = uuid.uuid4().hex
    path = '/v1/invoices/%s/pay' % inv['id']
    status, first, headers = idem('POST', path, {}, key)
    check(status == 402, (status, first))
    check(first['error']['type'] == 'card_error', first)
    check(not replayed(headers), 'first pay marked as a replay')
    after_first = invoice_get(inv['id'])
    check(after_first['attempt_count'] == 1, after_first['attempt_count'])
    failed = events('invoice.payment_failed', inv['id'])
    check(len(failed) == 1, 'invoice.payment_failed events: %d'
          % len(failed))
    status, again, headers = idem('POST', path, {}, key)
    check(status == 402, (status, again))
    check(again == first, 'replay differs: %s vs %s' % (again, first))
    check(replayed(headers), 'no Idempotent-Replayed: true on the replay')
    check(invoice_get(inv['id']) == after_first,
          'the replay changed the invoice')
    check(len(events('invoice.payment_failed', inv['id'])) == 1,
          'the replay sent invoice.payment_failed again')
    # Without the key it is a new attempt (a new charge).
    status, other, _ = exchange('POST', path)
    check(status == 402 and other['error']['charge']
          != first['error']['charge'], (status, other))


def test_idempotency_cache_bounds():
    cache = MODULE.IdempotencyCache(ttl=100, max_entries=3)

    def saved(created):
        return MODULE.SavedResponse(created, 'POST', '/v1/customers', 'f',
                                    200, b'{}', 'application/json', 'utf-8')
    cache.put(('sk', 'a'), saved(0))
    cache.put(('sk', 'b'), saved(50))
    check(cache.get(('sk', 'a'), 99) is not None, 'pruned before the TTL')
    check(cache.get(('sk', 'a'), 100) is None, 'kept after the TTL')
    check(cache.get(('sk', 'b'), 100) is not None, 'b pruned with a')
    for name, created in (('c', 101), ('d', 102), ('e', 103)):
        cache.put(('sk', name), saved(created))
    check(len(cache) == 3, len(cache))
    check(cache.get(('sk', 'b'), 103) is None, 'oldest not evicted')
    check(cache.get(('other', 'e'), 103) is None, 'keys leak across API keys')
    check(cache.get(('sk', 'e'), 103) is not None, 'newest evicted')


class Skip(Exception):
    pass


# --------------------------------------------------------------------------

def load_launcher():
    sys.dont_write_bytecode = True  # leave no __pycache__ in scripts/
    spec = importlib.util.spec_from_file_location(
        'localstripe_faithful', os.path.join(HERE, 'localstripe_faithful.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    global BASE, REQUEST_LOG, DEFAULTS, MODULE
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--port', type=int, required=True,
                        help='port of a running localstripe_faithful.py '
                             '(on 127.0.0.1)')
    parser.add_argument('--request-log',
                        help="the instance's LOCALSTRIPE_REQUEST_LOG file")
    parser.add_argument('-k', dest='only', help='run checks whose name '
                        'contains this')
    args = parser.parse_args(argv)
    BASE = 'http://127.0.0.1:%d' % args.port
    REQUEST_LOG = args.request_log
    MODULE = load_launcher()
    DEFAULTS = MODULE.DEFAULTS

    tests = [(name, fn) for name, fn in sorted(globals().items())
             if name.startswith('test_') and callable(fn)
             and (args.only is None or args.only in name)]
    passed = failed = skipped = 0
    for name, fn in tests:
        try:
            fn()
        except Skip as why:
            skipped += 1
            print('SKIP %s: %s' % (name, why))
        except Exception:
            failed += 1
            print('FAIL %s' % name)
            traceback.print_exc(limit=3)
        else:
            passed += 1
            print('ok   %s' % name)
    print('%d passed, %d failed, %d skipped' % (passed, failed, skipped))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
