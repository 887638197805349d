#!/usr/bin/env python3
"""Run localstripe 1.15.10 with responses shaped like the current Stripe API.

Why this exists
---------------
localstripe is a stateful fake Stripe server, but its JSON still follows a
2017-era API. async-stripe 1.0 deserializes into structs generated from the
current Stripe OpenAPI spec, and those structs treat many fields as always
present (product ``images``, invoice ``issuer``, event ``pending_webhooks``,
subscription item ``price``, ...). Against stock localstripe most billing
responses and every webhook event fail with an opaque "error deserializing".

This launcher imports localstripe, wraps its single serialization point
(``StripeObject._export``, used for HTTP responses, nested objects, list
pages and webhook event payloads alike) and completes every exported object
from one table of per-object-type defaults (``DEFAULTS`` below). It only
*adds* fields that localstripe leaves out, using the values real Stripe sends
for an account without Connect, tax, discounts or test clocks. The few places
where localstripe's value itself cannot be parsed (a null where Stripe always
sends a value, an obsolete JSON shape) are marked ``if_null`` / ``reshape``.

Three request-side gaps that a billing flow trips over are closed too (see
"Behaviour fixes"): invoice previews no longer swallow pending invoice items,
subscription updates accept ``proration_behavior``, paying an invoice with a
declining card emits the failure events Stripe sends, and created invoices
keep their metadata.

Invoices that the caller composes itself, without a subscription, follow the
API reference (see "Invoices composed by the caller"): a draft created with
``currency``, ``collection_method``, ``auto_advance`` and
``pending_invoice_items_behavior``; invoice items added to it with
``invoice=``; ``/finalize`` (missing from stock localstripe); ``/pay``
answering a decline with Stripe's 402 ``card_error``; ``/void`` of open
invoices only; ``/lines`` paginated with ``starting_after``. Each rule cites
the reference page it comes from.

POST requests with an ``Idempotency-Key`` header are idempotent as the API
reference describes (see "Idempotent requests"): the first response to a
key is saved (in memory, for 24 hours) and answered again, marked
``Idempotent-Replayed: true``, to every retry with the same key and
parameters, without reaching localstripe (no second object, no second
webhook); a retry with other parameters gets a 400 ``idempotency_error``.

With env ``LOCALSTRIPE_REQUEST_LOG`` naming a file, every request under
``/v1/`` is appended to it as one JSON line (method, path, parameters), for
checking what a client sent against Stripe's published parameters.

It also makes two deployment details configurable that stock localstripe
hard-codes:

* the listen address (``--host``, default 127.0.0.1; stock binds ``::``,
  i.e. every interface);
* the pickle file holding its state (env ``LOCALSTRIPE_STATE_FILE``, default
  /tmp/localstripe.pickle as before), so that two instances do not overwrite
  each other's data.

Usage::

    python3 scripts/localstripe_faithful.py --port 8420 [--from-scratch] \
        [--in-memory] [--host 127.0.0.1]

Requires ``pip install localstripe==1.15.10``.
"""

import argparse
import base64
import collections
import copy
import hashlib
import json
import logging
import os
import pickle
import re
import socket
import sys
import time

try:
    import localstripe
    from localstripe import resources, server
except ImportError:  # pragma: no cover - setup error, not a code path
    sys.exit('localstripe is not installed: pip install localstripe==1.15.10')

from aiohttp import web

SUPPORTED_LOCALSTRIPE = '1.15.10'


# --------------------------------------------------------------------------
# Markers used in DEFAULTS. A plain value is added when the key is missing
# (dicts are also merged into an existing dict, so nested objects get their
# missing keys too). Every value is deep-copied, never shared.
# --------------------------------------------------------------------------

class derived:
    """Value computed from the exported dict and the localstripe object."""

    def __init__(self, fn):
        self.fn = fn


class if_null:
    """Also replaces a null that localstripe sends where Stripe never does."""

    def __init__(self, value):
        self.value = value


class fill_in:
    """Complete a nested object only when localstripe sent one (it is
    conditional in Stripe too, e.g. ``card`` on a non-card payment method)."""

    def __init__(self, value):
        self.value = value


class reshape:
    """Convert a value localstripe sends in an obsolete shape."""

    def __init__(self, fn):
        self.fn = fn


def field(name):
    """Copy of another field of the same object (``updated`` = ``created``)."""
    return derived(lambda obj, src: obj.get(name))


# --------------------------------------------------------------------------
# Helpers for derived values
# --------------------------------------------------------------------------

def _price_from_plan(plan):
    """The Price object Stripe exposes next to every Plan (same id).

    Since 2018 Stripe returns both ``plan`` and ``price`` on subscription items
    and invoice lines; localstripe only knows plans, and async-stripe requires
    ``price``.
    """
    if not isinstance(plan, dict):
        return None
    amount = plan.get('amount')
    return {
        'id': plan['id'],
        'object': 'price',
        'active': plan.get('active', True),
        'billing_scheme': plan.get('billing_scheme', 'per_unit'),
        'created': plan.get('created'),
        'currency': plan.get('currency'),
        'custom_unit_amount': None,
        'livemode': False,
        'lookup_key': None,
        'metadata': copy.deepcopy(plan.get('metadata') or {}),
        'nickname': plan.get('nickname'),
        'product': plan.get('product'),
        'recurring': {
            'interval': plan.get('interval'),
            'interval_count': plan.get('interval_count', 1),
            'meter': None,
            'trial_period_days': plan.get('trial_period_days'),
            'usage_type': plan.get('usage_type', 'licensed'),
        },
        'tax_behavior': 'unspecified',
        'tiers_mode': plan.get('tiers_mode'),
        'transform_quantity': None,
        'type': 'recurring',
        'unit_amount': amount,
        'unit_amount_decimal': None if amount is None else str(amount),
    }


def _pricing_from_plan(plan):
    """Invoice line / invoice item ``pricing`` (API 2025-03-31+)."""
    if not isinstance(plan, dict):
        return None
    amount = plan.get('amount')
    return {
        'type': 'price_details',
        'price_details': {'price': plan['id'], 'product': plan.get('product')},
        'unit_amount_decimal': None if amount is None else str(amount),
    }


def _line_item_parent(obj, src):
    """Invoice line ``parent`` (API 2025-03-31+) from localstripe's ``type``.
    """
    proration_details = {'credited_items': None}
    subscription = obj.get('subscription')
    if subscription is None and isinstance(obj.get('invoice'), str):
        # Lines of invoices created via POST /v1/invoices lack it.
        invoice = resources.store.get('invoice:' + obj['invoice'])
        subscription = getattr(invoice, 'subscription', None)
    if obj.get('type') == 'subscription' and obj.get('subscription_item'):
        return {
            'type': 'subscription_item_details',
            'invoice_item_details': None,
            'subscription_item_details': {
                'invoice_item': None,
                'proration': bool(obj.get('proration')),
                'proration_details': proration_details,
                'subscription': subscription,
                'subscription_item': obj['subscription_item'],
            },
        }
    if obj.get('type') == 'invoiceitem' and obj.get('invoice_item'):
        return {
            'type': 'invoice_item_details',
            'invoice_item_details': {
                'invoice_item': obj['invoice_item'],
                'proration': bool(obj.get('proration')),
                'proration_details': proration_details,
                'subscription': subscription,
            },
            'subscription_item_details': None,
        }
    return None


def _invoice_item_parent(obj, src):
    """Invoice item ``parent`` (API 2025-03-31+)."""
    if not obj.get('subscription'):
        return None
    return {
        'type': 'subscription_details',
        'subscription_details': {
            'subscription': obj['subscription'],
            'subscription_item': None,
        },
    }


def _subscription_item_period(edge):
    """Billing period moved from the subscription to its items in 2025."""
    def fn(obj, src):
        try:
            return src._current_period()[edge]
        except (AttributeError, resources.UserError):
            # No localstripe object at hand, or its subscription was deleted.
            return obj.get('created')
    return derived(fn)


def _balance_amounts(value):
    # Stripe sends one entry per currency; localstripe a single dict.
    return [value] if isinstance(value, dict) else value


def _tiers(value):
    # localstripe stores tiers as posted (form strings, 'inf'); Stripe sends
    # integers, null for the last tier, plus the *_decimal strings.
    if not isinstance(value, list):
        return value
    out = []
    for tier in value:
        if not isinstance(tier, dict):
            out.append(tier)
            continue
        tier = dict(tier)
        for key in ('flat_amount', 'unit_amount'):
            raw = tier.get(key)
            amount = int(raw) if raw not in (None, '') else None
            tier[key] = amount
            tier.setdefault(key + '_decimal',
                            None if amount is None else str(amount))
        up_to = tier.get('up_to')
        tier['up_to'] = None if up_to in (None, 'inf') else int(up_to)
        out.append(tier)
    return out


def _charge_outcome(obj, src):
    failed = obj.get('status') == 'failed'
    return {
        'advice_code': None,
        'network_advice_code': None,
        'network_decline_code': None,
        'network_status': ('declined_by_network' if failed
                           else 'approved_by_network'),
        'reason': 'generic_decline' if failed else None,
        'risk_level': 'normal',
        'risk_score': 20,
        'seller_message': ('The bank did not return any further details '
                           'with this decline.' if failed
                           else 'Payment complete.'),
        'type': 'issuer_declined' if failed else 'authorized',
    }


def _charge_payment_method_details(obj, src):
    pm_type = 'card'
    pm_id = obj.get('payment_method')
    if isinstance(pm_id, str):
        pm = resources.store.get('payment_method:' + pm_id)
        if pm is not None:
            pm_type = pm.type
    return {'type': pm_type}


def _payment_method_types(obj, src):
    pm_id = obj.get('payment_method')
    if isinstance(pm_id, str):
        pm = resources.store.get('payment_method:' + pm_id)
        if pm is not None:
            return [pm.type]
    return ['card']


BILLING_DETAILS = {
    'address': None, 'email': None, 'name': None, 'phone': None,
    'tax_id': None,
}

# Who issues invoices; the platform itself unless Connect is used.
ISSUER_SELF = {'type': 'self'}


# --------------------------------------------------------------------------
# Fields real Stripe sends, per object type (the `object` key). Values are
# those of an account without Connect, Stripe Tax, discounts or test clocks.
# --------------------------------------------------------------------------

DEFAULTS = {
    'balance': {
        'available': reshape(_balance_amounts),
        'pending': reshape(_balance_amounts),
        'connect_reserved': None,
        'instant_available': None,
        'issuing': None,
        'refund_and_dispute_prefunding': None,
    },
    'balance_transaction': {
        # Card charges settle into the regular payments balance.
        'balance_type': 'payments',
    },
    'card': {
        'address_line1_check': None,
        'address_zip_check': None,
        'allow_redisplay': 'unspecified',
        'regulated_status': 'unregulated',
        'wallet': None,
    },
    'charge': {
        'amount_captured': derived(
            lambda obj, src: obj.get('amount', 0) if obj.get('captured')
            else 0),
        'application': None,
        'application_fee': None,
        'application_fee_amount': None,
        'billing_details': BILLING_DETAILS,
        'calculated_statement_descriptor': None,
        'disputed': False,
        'failure_balance_transaction': None,
        'fraud_details': {},
        'on_behalf_of': None,
        'outcome': derived(_charge_outcome),
        'payment_method_details': derived(_charge_payment_method_details),
        'receipt_url': None,
        'review': None,
        'shipping': None,
        'source_transfer': None,
        'statement_descriptor_suffix': None,
        'transfer_data': None,
        'transfer_group': None,
    },
    'coupon': {
        'applies_to': None,
        'name': None,
    },
    'customer': {
        'balance': derived(lambda obj, src: obj.get('account_balance', 0)),
        'invoice_settings': {
            'custom_fields': None,
            'default_payment_method': None,
            'footer': None,
            'rendering_options': None,
        },
        'next_invoice_sequence': 1,
        'tax_exempt': 'none',
        'test_clock': None,
    },
    'event': {
        # Deliveries are not tracked by localstripe; 0 = nothing pending.
        'pending_webhooks': 0,
        'request': {'id': None, 'idempotency_key': None},
    },
    'invoice': {
        'account_country': 'US',
        'account_name': None,
        'account_tax_ids': None,
        'amount_overpaid': 0,
        'amount_remaining': derived(
            lambda obj, src: max(0, (obj.get('amount_due') or 0)
                                 - (obj.get('amount_paid') or 0))),
        'amount_shipping': 0,
        'application': None,
        'automatic_tax': {
            'disabled_reason': None, 'enabled': False, 'liability': None,
            'provider': None, 'status': None,
        },
        'automatically_finalizes_at': None,
        'collection_method': 'charge_automatically',
        'confirmation_secret': None,
        'custom_fields': None,
        'customer_address': None,
        'customer_name': None,
        'customer_phone': None,
        'customer_shipping': None,
        'customer_tax_exempt': 'none',
        'customer_tax_ids': [],
        'default_payment_method': None,
        'default_source': None,
        'default_tax_rates': if_null([]),
        'discounts': [],
        'due_date': None,
        'effective_at': derived(
            lambda obj, src: (obj.get('status_transitions') or {})
            .get('finalized_at')),
        'footer': None,
        'from_invoice': None,
        'hosted_invoice_url': None,
        'invoice_pdf': None,
        'issuer': ISSUER_SELF,
        'last_finalization_error': None,
        'latest_revision': None,
        'number': None,
        'on_behalf_of': None,
        'payment_settings': {
            'default_mandate': None,
            'payment_method_options': None,
            'payment_method_types': None,
        },
        # Invoices without a subscription: Stripe uses the creation time.
        'period_end': if_null(field('created')),
        'period_start': if_null(field('created')),
        'post_payment_credit_notes_amount': 0,
        'pre_payment_credit_notes_amount': 0,
        'rendering': None,
        'shipping_cost': None,
        'shipping_details': None,
        'status_transitions': {
            'finalized_at': None, 'marked_uncollectible_at': None,
            'paid_at': None, 'voided_at': None,
        },
        'subtotal_excluding_tax': field('subtotal'),
        'test_clock': None,
        'threshold_reason': None,
        'total_discount_amounts': [],
        'total_excluding_tax': field('subtotal'),
        'total_pretax_credit_amounts': [],
        'total_taxes': [],
    },
    'invoiceitem': {
        'discountable': derived(lambda obj, src: not obj.get('proration')),
        'discounts': [],
        'net_amount': field('amount'),
        'parent': derived(_invoice_item_parent),
        'pricing': derived(
            lambda obj, src: _pricing_from_plan(obj.get('plan'))),
        'proration_details': {'credited_items': None, 'discount_amounts': []},
        'quantity_decimal': derived(
            lambda obj, src: str(obj.get('quantity', 1))),
        'test_clock': None,
    },
    'line_item': {
        'discount_amounts': [],
        'discountable': derived(lambda obj, src: not obj.get('proration')),
        'discounts': [],
        'parent': derived(_line_item_parent),
        'pretax_credit_amounts': [],
        'pricing': derived(
            lambda obj, src: _pricing_from_plan(obj.get('plan'))),
        'subtotal': field('amount'),
        'taxes': [],
    },
    'list': {
        'url': if_null(''),
    },
    'payment_intent': {
        'amount_capturable': 0,
        'amount_details': {'tip': {}},
        'amount_received': derived(
            lambda obj, src: obj.get('amount', 0)
            if obj.get('status') == 'succeeded' else 0),
        'application': None,
        'application_fee_amount': None,
        'automatic_payment_methods': None,
        'canceled_at': None,
        'cancellation_reason': None,
        'confirmation_method': 'automatic',
        'description': None,
        'excluded_payment_method_types': None,
        # localstripe's decline error lacks the error type Stripe sends.
        'last_payment_error': fill_in({
            'decline_code': 'generic_decline',
            'type': 'card_error',
        }),
        'on_behalf_of': None,
        'payment_method_configuration_details': None,
        'payment_method_options': {},
        'payment_method_types': derived(_payment_method_types),
        'processing': None,
        'receipt_email': None,
        'review': None,
        'setup_future_usage': None,
        'shipping': None,
        'statement_descriptor': None,
        'statement_descriptor_suffix': None,
        'transfer_data': None,
        'transfer_group': None,
    },
    'payment_method': {
        'allow_redisplay': 'unspecified',
        'billing_details': BILLING_DETAILS,
        'card': fill_in({
            'checks': {
                'address_line1_check': None,
                'address_postal_code_check': None,
                'cvc_check': 'pass',
            },
            'display_brand': derived(lambda obj, src: obj.get('brand')),
            'generated_from': None,
            'networks': derived(lambda obj, src: {
                'available': [obj.get('brand', 'visa')], 'preferred': None}),
            'regulated_status': 'unregulated',
            'wallet': None,
        }),
    },
    'plan': {
        'amount_decimal': derived(
            lambda obj, src: None if obj.get('amount') is None
            else str(obj['amount'])),
        'meter': None,
        'tiers': reshape(_tiers),
        'transform_usage': None,
    },
    'product': {
        'default_price': None,
        'images': [],
        'marketing_features': [],
        'package_dimensions': None,
        'tax_code': None,
        'unit_label': None,
        'updated': field('created'),
    },
    'refund': {
        'destination_details': None,
        'reason': None,
        'receipt_number': None,
        'source_transfer_reversal': None,
        'transfer_reversal': None,
    },
    'setup_intent': {
        'application': None,
        'automatic_payment_methods': None,
        'cancellation_reason': None,
        'description': None,
        'flow_directions': None,
        'last_setup_error': fill_in({'type': 'card_error'}),
        'latest_attempt': None,
        'mandate': None,
        'on_behalf_of': None,
        'payment_method_options': {},
        'payment_method_types': ['card'],
        'single_use_mandate': None,
        'usage': 'off_session',
    },
    'subscription': {
        'automatic_tax': {
            'disabled_reason': None, 'enabled': False, 'liability': None,
        },
        # Without an explicit anchor Stripe anchors on the start date.
        'billing_cycle_anchor': if_null(field('start_date')),
        'billing_cycle_anchor_config': None,
        'billing_mode': {'flexible': None, 'type': 'classic',
                         'updated_at': None},
        'billing_schedules': [],
        'billing_thresholds': None,
        'cancellation_details': {
            'comment': None, 'feedback': None, 'reason': None,
        },
        'collection_method': 'charge_automatically',
        'currency': derived(
            lambda obj, src: (obj.get('plan') or {}).get('currency')),
        'days_until_due': None,
        'default_payment_method': None,
        'default_source': None,
        'default_tax_rates': if_null([]),
        'description': None,
        'discounts': [],
        'invoice_settings': {'account_tax_ids': None, 'issuer': ISSUER_SELF},
        'next_pending_invoice_item_invoice': None,
        'on_behalf_of': None,
        'pause_collection': None,
        'payment_settings': {
            'payment_method_options': None,
            'payment_method_types': None,
            'save_default_payment_method': 'off',
        },
        'pending_invoice_item_interval': None,
        'pending_setup_intent': None,
        'pending_update': None,
        'schedule': None,
        'test_clock': None,
        'transfer_data': None,
        'trial_settings': {
            'end_behavior': {'missing_payment_method': 'create_invoice'},
        },
    },
    'subscription_item': {
        'billing_thresholds': None,
        'current_period_end': _subscription_item_period('end'),
        'current_period_start': _subscription_item_period('start'),
        'discounts': [],
        'price': derived(lambda obj, src: _price_from_plan(obj.get('plan'))),
        # localstripe keeps the owning subscription in a private attribute.
        'subscription': derived(
            lambda obj, src: getattr(src, '_subscription', None)),
    },
    'tax_rate': {
        'country': None,
        'effective_percentage': field('percentage'),
        'flat_amount': None,
        'jurisdiction_level': None,
        'rate_type': 'percentage',
        'state': None,
        'tax_type': None,
    },
    'token': {
        'client_ip': None,
        'used': False,
    },
}


# --------------------------------------------------------------------------
# Completion of exported objects
# --------------------------------------------------------------------------

def _resolve(default, obj, src):
    if isinstance(default, derived):
        return default.fn(obj, src)
    if isinstance(default, if_null):
        return _resolve(default.value, obj, src)
    return copy.deepcopy(default)


def _merge_missing(target, defaults, src):
    """Add the keys of `defaults` that `target` lacks, recursively."""
    for key, default in defaults.items():
        if isinstance(default, reshape):
            if key in target:
                target[key] = default.fn(target[key])
        elif isinstance(default, fill_in):
            if isinstance(target.get(key), dict):
                _merge_missing(target[key], default.value, src)
        elif key not in target:
            target[key] = _resolve(default, target, src)
        elif target[key] is None and isinstance(default, if_null):
            target[key] = _resolve(default, target, src)
        elif isinstance(default, dict) and isinstance(target[key], dict):
            _merge_missing(target[key], default, src)


def complete(obj, src=None):
    """Return `obj` (exported JSON) with the fields real Stripe would send.

    Nested objects exported through `_export` are already complete; this also
    reaches the plain dicts localstripe embeds (event ``data.object`` copies,
    list pages), which is idempotent for the rest.
    """
    if isinstance(obj, list):
        return [complete(item) for item in obj]
    if not isinstance(obj, dict):
        return obj
    # Copy: exported dicts may share nested dicts with stored objects.
    obj = {key: complete(value) for key, value in obj.items()}
    object_type = obj.get('object')
    if isinstance(object_type, str) and object_type in DEFAULTS:
        _merge_missing(obj, DEFAULTS[object_type], src)
    return obj


def _wrap_export(cls):
    original = cls._export

    def _export(self, expand=None):
        exported = original(self, expand=expand)
        # Balance leaves out `object` (a class attribute); Stripe always
        # sends it and async-stripe dispatches on it.
        if isinstance(exported, dict) and 'object' not in exported:
            exported['object'] = getattr(self, 'object', None)
        return complete(exported, self)

    _export.__wrapped__ = original
    cls._export = _export


# --------------------------------------------------------------------------
# Behaviour fixes (request side). Kept to what a billing flow trips over.
# --------------------------------------------------------------------------

def _pending_invoice_items():
    return [item for item in _objects_of_type('invoiceitem').values()
            if item.invoice is None]


def _previews_keep_pending_items(original):
    """GET /v1/invoices/upcoming and POST /v1/invoices/create_preview build a
    throwaway invoice; stock localstripe attaches the customer's pending
    invoice items to it, so they silently never reach the next real invoice.
    """
    def _get_next_invoice(cls, *args, upcoming=False, **kwargs):
        pending = _pending_invoice_items() if upcoming else []
        try:
            return original.__func__(cls, *args, upcoming=upcoming, **kwargs)
        finally:
            for item in pending:
                item.invoice = None
    return classmethod(_get_next_invoice)


def _subscription_update_with_proration_behavior(original):
    """Accept `proration_behavior` on subscription updates (stock localstripe
    answers 500). localstripe always credits unused time as a proration
    invoice item: that is `create_prorations`; `none` drops those items while
    they are pending. (An interval change makes localstripe invoice at once,
    credit included, whatever the behaviour.) `always_invoice` gets a 400.
    """
    def _update(self, proration_behavior=None, **data):
        if proration_behavior not in (None, 'create_prorations', 'none'):
            raise resources.UserError(
                400, 'proration_behavior=%s is not supported by localstripe'
                % proration_behavior)
        before = set(_objects_of_type('invoiceitem'))
        original(self, **data)
        if proration_behavior == 'none':
            for key in set(_objects_of_type('invoiceitem')) - before:
                item = resources.store.get(key)
                if item.proration and item.invoice is None:
                    del resources.store[key]
    return _update


def _invoice_payment_failure_events(original):
    """POST /v1/invoices/{id}/pay with a declining card leaves the invoice
    open, as Stripe does, but stock localstripe emits no event for it. Stripe
    sends payment_intent.payment_failed and invoice.payment_failed; send them
    too (events only: localstripe's own state handling is left as is).
    """
    def _confirm(self, on_failure_now):
        # Outside invoices, on_failure_now reports the failure itself (and
        # raises), so this only runs for the silent invoice payment path.
        original(self, on_failure_now)
        charge = self.latest_charge
        if self.invoice and charge is not None and charge.status == 'failed':
            invoice = resources.Invoice._api_retrieve(self.invoice)
            resources.schedule_webhook(
                resources.Event('payment_intent.payment_failed', self))
            resources.schedule_webhook(
                resources.Event('invoice.payment_failed', invoice))
    return _confirm


def _invoice_create_keeps_metadata(original):
    """POST /v1/invoices accepts ``metadata`` but stock localstripe drops it;
    Stripe keeps it, and a caller finding its invoice again by a reference
    stored there depends on that.
    """
    def _api_create(cls, metadata=None, **data):
        invoice = original.__func__(cls, **data)
        if metadata:
            invoice.metadata = dict(metadata)
        return invoice
    return classmethod(_api_create)


# --------------------------------------------------------------------------
# Invoices composed by the caller (no subscription)
#
# A billing service that composes each Stripe invoice itself makes a draft
# without a subscription, adds its lines with `invoice=`, then finalizes,
# pays or voids it when it decides to. Stock localstripe only knows the
# invoices a subscription generates. Each rule below follows the API
# reference and cites it; nothing the reference leaves open is invented.
# --------------------------------------------------------------------------

# https://docs.stripe.com/api/errors : every error is `{"error": {...}}` with
# `type` ("card_error", "invalid_request_error", ...), `message` and, "for
# some errors that could be handled programmatically", a `code`. The
# reference gives no error messages: those below are this fake's, and a
# `code` is sent only where a documented one applies.
def _error(status, message, type='invalid_request_error', **fields):
    error = resources.UserError(status, message, dict(fields))
    # UserError always stamps invalid_request_error.
    error.body['error']['type'] = type
    return error


def _unexpected(params):
    # Stock localstripe's answer to a parameter it does not implement.
    return resources.UserError(400, 'Unexpected ' + ', '.join(sorted(params)))


def _bool_param(name, value, default):
    if value is None:
        return default
    value = resources.try_convert_to_bool(value)
    if not isinstance(value, bool):
        raise _error(400, 'Invalid boolean: %s' % value, param=name)
    return value


def _invoice_create_without_subscription(original):
    """POST /v1/invoices without ``subscription``. Stock localstripe only
    builds the next invoice of a subscription (400 or 404 otherwise), sweeps
    every pending invoice item of the customer into it, and ignores
    ``currency``, ``collection_method`` and ``auto_advance``. Invoices with a
    ``subscription`` still take localstripe's own path.
    """
    def _api_create(cls, **data):
        if data.get('subscription') is not None:
            return original.__func__(cls, **data)
        return _create_standalone_invoice(cls, **data)
    return classmethod(_api_create)


def _create_standalone_invoice(cls, customer=None, currency=None,
                               collection_method=None, auto_advance=None,
                               pending_invoice_items_behavior=None,
                               description=None, metadata=None,
                               default_tax_rates=None, tax_percent=None,
                               subscription=None, **unexpected):
    if unexpected:
        raise _unexpected(unexpected)
    # https://docs.stripe.com/api/invoices/create#create_invoice-pending_invoice_items_behavior
    # "How to handle pending invoice items on invoice creation. Defaults to
    # `exclude` if the parameter is omitted." Values: exclude, include
    # (include_and_require was removed in 2022-08-01:
    # https://docs.stripe.com/changelog/2022-08-01/removes-include-require-value-invoices).
    behavior = pending_invoice_items_behavior or 'exclude'
    if behavior not in ('exclude', 'include'):
        raise _error(400, 'Invalid pending_invoice_items_behavior: must be '
                     'one of exclude or include',
                     param='pending_invoice_items_behavior')
    # https://docs.stripe.com/api/invoices/create#create_invoice-collection_method
    # "Either `charge_automatically`, or `send_invoice`. [...] Defaults to
    # `charge_automatically`." send_invoice (emails, due dates) is not faked.
    collection_method = collection_method or 'charge_automatically'
    if collection_method != 'charge_automatically':
        raise _error(400, 'collection_method=%s is not supported by '
                     'localstripe' % collection_method,
                     param='collection_method')
    # https://docs.stripe.com/api/invoices/create#create_invoice-auto_advance
    # "Controls whether Stripe performs automatic collection of the invoice.
    # If `false`, the invoice's state doesn't automatically advance without
    # an explicit action. Defaults to false." This fake never advances an
    # invoice by itself either way; the flag is stored and returned.
    auto_advance = _bool_param('auto_advance', auto_advance, False)
    if currency is not None:
        if not (isinstance(currency, str)
                and re.fullmatch('[A-Za-z]{3}', currency)):
            raise _error(400, 'Invalid currency: %s' % currency,
                         param='currency')
        currency = currency.lower()
    if metadata is not None and not isinstance(metadata, dict):
        raise _error(400, 'Invalid metadata', param='metadata')

    # Invoice() sweeps every pending item of the customer; with `exclude`
    # they are hidden from it for the time of the call.
    hidden = []
    if behavior == 'exclude':
        hidden = [item for item in _pending_invoice_items()
                  if item.customer == customer]
    for item in hidden:
        item.invoice = _EXCLUDED
    try:
        # upcoming=True only keeps Invoice() from sending invoice.created
        # before the fields below are set; it is sent at the end.
        invoice = cls(customer=customer, description=description,
                      metadata=metadata, default_tax_rates=default_tax_rates,
                      tax_percent=tax_percent, upcoming=True)
    finally:
        for item in hidden:
            item.invoice = None

    invoice._standalone = True
    # https://docs.stripe.com/api/invoices/create#create_invoice-currency
    # "The currency to create this invoice in. Defaults to that of
    # `customer` if not specified."
    if currency is None:
        currency = (invoice.lines._list[0].currency if invoice.lines._list
                    else resources.Customer._api_retrieve(customer).currency)
    invoice.currency = currency
    invoice.collection_method = collection_method
    invoice.auto_advance = auto_advance
    # https://docs.stripe.com/api/invoices/object#invoice_object-attempt_count
    # counts payment attempts: none yet (localstripe starts at 1).
    invoice.attempt_count = 0
    invoice.attempted = False
    # https://docs.stripe.com/api/invoices/create (example response):
    # "billing_reason": "manual" for an invoice created through the API.
    invoice.billing_reason = 'manual'
    # https://docs.stripe.com/api/invoices/create#create_invoice-number
    # "If no number is present then a number will be assigned automatically
    # when the invoice is finalized."
    invoice.number = None
    resources.schedule_webhook(resources.Event('invoice.created', invoice))
    return invoice


# Marks a pending invoice item as taken while a draft is being built.
_EXCLUDED = 'in_excluded_by_pending_invoice_items_behavior'


def _standalone_total(original):
    """``total`` of an invoice composed by the caller.

    https://docs.stripe.com/api/invoices/object#invoice_object-total "Total
    after discounts and taxes." Credits (negative invoice items) may make it
    negative. localstripe's own total (clamped at 0, less the customer's
    balance) is kept for its subscription invoices.
    """
    def total(self):
        if getattr(self, '_standalone', False):
            return self.subtotal + self.tax
        return original.fget(self)
    return property(total)


def _standalone_amount_due(original):
    """``amount_due`` of an invoice composed by the caller: never negative.

    https://docs.stripe.com/api/invoices/object#invoice_object-amount_due
    "Final amount due at this time for this invoice. If the invoice's total
    is smaller than the minimum charge amount, for example, or if there is
    account credit that can be applied to the invoice, the `amount_due` may
    be 0." (Customer balances and minimum charge amounts are not faked.)
    """
    def amount_due(self):
        if getattr(self, '_standalone', False):
            return max(0, self.total)
        return original.fget(self)
    return property(amount_due)


def _standalone_next_payment_attempt(original):
    """``next_payment_attempt`` is null when nothing will attempt payment.

    https://docs.stripe.com/invoicing/integration/automatic-advancement-collection
    "When you set `auto_advance` to `false`, you're responsible for
    transitioning the invoice between states." localstripe reports the
    creation date as the next attempt of every draft or open invoice.
    """
    def next_payment_attempt(self):
        if getattr(self, '_standalone', False) and not self.auto_advance:
            return None
        return original.fget(self)
    return property(next_payment_attempt)


def _invoice_item_added_to_invoice(original):
    """POST /v1/invoiceitems with ``invoice``: stock localstripe records the
    id on the item but never adds the item to that invoice's lines or
    totals, whatever the invoice's status.
    """
    def _api_create(cls, invoice=None, **data):
        if invoice is None:
            return original.__func__(cls, **data)
        if not (isinstance(invoice, str) and invoice.startswith('in_')):
            raise resources.UserError(400, 'Bad request')
        target = resources.Invoice._api_retrieve(invoice)  # 404 if missing
        # https://docs.stripe.com/api/invoiceitems/create#create_invoiceitem-invoice
        # "The ID of an existing invoice to add this invoice item to. [...]
        # You can only add invoice items to draft invoices and there is a
        # maximum of 250 items per invoice." The code is invoice_not_editable
        # from Stripe's list of error codes
        # (https://docs.stripe.com/error-codes, the `code` enum of
        # https://docs.stripe.com/api/errors).
        if target.status != 'draft':
            raise _error(400, 'You can only add invoice items to draft '
                         'invoices; invoice %s is %s.'
                         % (invoice, target.status),
                         code='invoice_not_editable', param='invoice')
        if len(target.lines._list) >= 250:
            raise _error(400, 'An invoice can have at most 250 invoice '
                         'items.', param='invoice')
        # An invoice has a single `currency`
        # (https://docs.stripe.com/api/invoices/object#invoice_object-currency);
        # the reference does not spell out the error for an item in another
        # one, so message and absence of a code here are localstripe's.
        currency = data.get('currency')
        if isinstance(currency, str) and currency.lower() != target.currency:
            raise _error(400, 'The currency of the invoice item (%s) must '
                         'match the currency of invoice %s (%s).'
                         % (currency, invoice, target.currency),
                         param='currency')
        # https://docs.stripe.com/api/invoiceitems/create#create_invoiceitem-amount
        # "Passing in a negative `amount` will reduce the `amount_due` on the
        # invoice." localstripe accepts any integer; subtotal, total and
        # amount_due are computed from the lines.
        item = original.__func__(cls, invoice=invoice, **data)
        # https://docs.stripe.com/api/invoice-line-item "Each line item is
        # backed by either an invoice item or a subscription item." The line
        # has the item's metadata (InvoiceLineItem shares the dict).
        target.lines._list.append(resources.InvoiceLineItem(item))
        return item
    return classmethod(_api_create)


def _next_invoice_number(customer_id):
    """https://docs.stripe.com/api/invoices/object#invoice_object-number
    "A unique, identifying string that appears on emails sent to the
    customer for this invoice. This starts with the customer's unique
    invoice_prefix if it is specified." Here PREFIX-0001, PREFIX-0002, ...
    per customer, the prefix derived from the customer id.
    """
    prefix = hashlib.sha1(customer_id.encode('utf-8')).hexdigest()[:8]
    customer = resources.store.get('customer:' + customer_id)
    sequence = getattr(customer, '_faithful_invoice_sequence', 0) + 1
    if customer is not None:
        customer._faithful_invoice_sequence = sequence
    return '%s-%04d' % (prefix.upper(), sequence)


def _finalize_draft(invoice, auto_advance=None):
    # https://docs.stripe.com/invoicing/integration/workflow-transitions
    # draft -> POST /v1/invoices/:id/finalize -> invoice.finalized -> open.
    invoice._finalize()  # localstripe: open, status_transitions.finalized_at
    if getattr(invoice, 'number', None) is None:
        invoice.number = _next_invoice_number(invoice.customer)
    # https://docs.stripe.com/api/invoices/finalize#finalize_invoice-auto_advance
    # "Controls whether Stripe performs automatic collection of the
    # invoice. If `false`, the invoice's state doesn't automatically advance
    # without an explicit action."
    if auto_advance is not None:
        invoice.auto_advance = auto_advance
    resources.schedule_webhook(resources.Event('invoice.finalized', invoice))
    # https://docs.stripe.com/api/invoices "If the amount due for the invoice
    # is less than Stripe's minimum allowed charge per currency, the invoice
    # is automatically marked paid" -- here when nothing is due (minimum
    # charge amounts are not faked). localstripe already reports it paid;
    # this records paid_at and sends the payment events.
    if invoice.amount_due == 0:
        invoice._on_payment_success()


def _finalize_invoice(id, auto_advance=None, **unexpected):
    """POST /v1/invoices/{id}/finalize, which stock localstripe lacks (404).

    https://docs.stripe.com/api/invoices/finalize "Stripe automatically
    finalizes drafts before sending and attempting payment on invoices.
    However, if you'd like to finalize a draft invoice manually, you can do
    so using this method."
    """
    if unexpected:
        raise _unexpected(unexpected)
    auto_advance = _bool_param('auto_advance', auto_advance, None)
    invoice = resources.Invoice._api_retrieve(id)
    # Only drafts are finalized (workflow-transitions, above).
    # https://docs.stripe.com/changelog/2018-11-08/renames-invoice-error-code-invoice-already-finalized
    # "You now encounter the `invoice_already_finalized` error code when
    # attempting to modify an invoice that has been finalized."
    if invoice.status != 'draft':
        raise _error(400, "This invoice is already finalized, you can't "
                     're-finalize a non-draft invoice.',
                     code='invoice_already_finalized')
    _finalize_draft(invoice, auto_advance)
    return invoice


def _invoice_paid_event(original):
    """A successful invoice payment also sends ``invoice.paid`` (localstripe
    sends only invoice.payment_succeeded) and stops automatic advancement.

    https://docs.stripe.com/invoicing/integration/workflow-transitions
    open -> POST /v1/invoices/:id/pay -> invoice.paid -> paid.
    https://docs.stripe.com/invoicing/integration/automatic-advancement-collection
    "Automatic advancement and collection never occur on invoices that are
    marked uncollectible, void, or paid. For these invoices, auto_advance is
    always set to false".
    """
    def _on_payment_success(self):
        original(self)
        if hasattr(self, 'auto_advance'):
            self.auto_advance = False
        resources.schedule_webhook(resources.Event('invoice.paid', self))
    return _on_payment_success


# https://docs.stripe.com/error-codes/card-declined
CARD_DECLINED_DOC = 'https://docs.stripe.com/error-codes/card-declined'


def _pay_invoice(id, off_session=None, **unexpected):
    """POST /v1/invoices/{id}/pay. Stock localstripe answers 200 with the
    invoice still open when the card is declined, 500 on ``off_session``,
    and counts no attempts.
    """
    # https://docs.stripe.com/api/invoices/pay lists forgive, mandate,
    # off_session, paid_out_of_band, payment_method and source; only
    # off_session is implemented.
    if unexpected:
        raise _unexpected(unexpected)
    # https://docs.stripe.com/api/invoices/pay#pay_invoice-off_session
    # "Indicates if a customer is on or off-session while an invoice payment
    # is attempted. Defaults to `true` (off-session)." No payment method
    # here ever asks for the customer, so both are charged alike.
    _bool_param('off_session', off_session, True)
    invoice = resources.Invoice._api_retrieve(id)
    # https://docs.stripe.com/invoicing/integration/workflow-transitions
    # /pay is a transition of `open` (and `uncollectible`) invoices only.
    if invoice.status == 'paid':
        raise _error(400, 'Invoice is already paid')
    if invoice.status not in ('draft', 'open'):
        raise _error(400, 'You cannot pay an invoice whose status is %s.'
                     % invoice.status)
    # https://docs.stripe.com/api/invoices/finalize "Stripe automatically
    # finalizes drafts before sending and attempting payment on invoices."
    if invoice.status == 'draft':
        _finalize_draft(invoice)
        if invoice.status == 'paid':  # nothing was due
            return invoice
    # https://docs.stripe.com/api/invoices/object#invoice_object-collection_method
    # "When charging automatically, Stripe will attempt to pay this invoice
    # using the default source attached to the customer" -- here the
    # customer's invoice_settings.default_payment_method (else its default
    # source), as localstripe does.
    customer = resources.Customer._api_retrieve(invoice.customer)
    if customer._get_default_payment_method_or_source() is None:
        raise _error(400, 'This customer has no attached payment source or '
                     'default payment method.')
    # https://docs.stripe.com/api/invoices/object#invoice_object-attempt_count
    # "Any payment attempt counts as the first attempt, and subsequently
    # only automatic retries increment the attempt count. In other words,
    # manual payment attempts after the first attempt do not affect the
    # retry schedule." This fake never retries by itself.
    invoice.attempted = True
    invoice.attempt_count = max(1, invoice.attempt_count or 0)
    # localstripe charges the default payment method through a
    # PaymentIntent; _invoice_payment_failure_events sends the failure
    # events of a decline.
    resources.Invoice._api_pay_invoice(id)
    charge = invoice.charge
    if charge is not None and charge.status == 'failed':
        # https://docs.stripe.com/api/errors "card_error: Card errors are the
        # most common type of error you should expect to handle. They result
        # when the user enters a card that can't be charged for some
        # reason." HTTP 402: "The parameters were valid but the request
        # failed." `decline_code`: "For card errors resulting from a card
        # issuer decline, a short string indicating the card issuer's reason
        # for the decline"; `charge`: "For card errors, the ID of the failed
        # charge." The invoice stays open (workflow-transitions:
        # open -> /pay -> invoice.payment_failed -> open).
        raise _error(402, charge.failure_message or 'Your card was declined.',
                     type='card_error',
                     code=charge.failure_code or 'card_declined',
                     decline_code='generic_decline', charge=charge.id,
                     doc_url=CARD_DECLINED_DOC)
    return invoice


def _void_invoice(id, **unexpected):
    """POST /v1/invoices/{id}/void. Stock localstripe also voids drafts,
    answers 400 for an open invoice that was never charged (it cancels a
    PaymentIntent that does not exist) and sends no event.
    """
    if unexpected:
        raise _unexpected(unexpected)
    invoice = resources.Invoice._api_retrieve(id)
    # https://docs.stripe.com/api/invoices/void "Mark a finalized invoice as
    # void. This cannot be undone. Voiding an invoice is similar to
    # deletion, however it only applies to finalized invoices".
    # https://docs.stripe.com/invoicing/integration/workflow-transitions
    # lists /void for `open` and `uncollectible` invoices only (drafts are
    # deleted); localstripe has no uncollectible status.
    if invoice.status != 'open':
        raise _error(400, 'You can only void an open invoice; invoice %s is '
                     '%s.' % (id, invoice.status))
    if invoice.payment_intent:
        intent = resources.PaymentIntent._api_retrieve(invoice.payment_intent)
        if intent.status in ('requires_payment_method', 'requires_capture',
                             'requires_confirmation', 'requires_action'):
            resources.PaymentIntent._api_cancel(intent.id)
    invoice._voided = True
    invoice.status_transitions['voided_at'] = int(time.time())
    # automatic-advancement-collection: "auto_advance is always set to
    # false" for void invoices.
    invoice.auto_advance = False
    if invoice.subscription:  # as stock localstripe
        subscription = resources.Subscription._api_retrieve(
            invoice.subscription)
        subscription._on_initial_payment_voided(invoice)
    # workflow-transitions: open -> /void -> invoice.voided -> void.
    resources.schedule_webhook(resources.Event('invoice.voided', invoice))
    return invoice


def _list_invoice_lines(id, limit=None, starting_after=None, **unexpected):
    """GET /v1/invoices/{id}/lines. Stock localstripe rejects
    ``starting_after`` (400).

    https://docs.stripe.com/api/invoices/invoice_lines "When retrieving an
    invoice, you'll get a lines property containing the total count of line
    items and the first handful of those items. There is also a URL where
    you can retrieve the full (paginated) list of line items."
    https://docs.stripe.com/api/pagination "starting_after: A cursor for use
    in pagination. starting_after is an object ID that defines your place in
    the list."
    """
    if unexpected:
        raise _unexpected(unexpected)
    invoice = resources.Invoice._api_retrieve(id)
    lines = resources.List('/v1/invoices/' + id + '/lines', limit=limit,
                           starting_after=starting_after)
    lines._list = invoice.lines._list
    return lines


# Routes served here instead of by localstripe: (method, route template) ->
# function called with the request's parameters, as localstripe's own
# extra routes are (server.api_extra).
ROUTES = {
    ('POST', '/v1/invoices/{id}/finalize'): _finalize_invoice,
    ('POST', '/v1/invoices/{id}/pay'): _pay_invoice,
    ('POST', '/v1/invoices/{id}/void'): _void_invoice,
    ('GET', '/v1/invoices/{id}/lines'): _list_invoice_lines,
}


def _install_routes(app):
    """Adds the routes localstripe lacks and takes over the ones it has.

    localstripe's handlers capture their functions when its server module
    is imported, so an existing route is taken over by a middleware that
    answers for its template instead.
    """
    existing = {(route.method, route.resource.canonical)
                for route in app.router.routes()
                if route.resource is not None}
    handlers = {}
    for (method, url), func in ROUTES.items():
        handler = server.api_extra(func, url)
        if (method, url) in existing:
            handlers[(method, url)] = handler
        else:
            app.router.add_route(method, url, handler)

    @web.middleware
    async def faithful_routes(request, handler):
        resource = getattr(request.match_info.route, 'resource', None)
        if resource is not None:
            own = handlers.get((request.method, resource.canonical))
            if own is not None:
                return await own(request)
        return await handler(request)

    # Innermost: after localstripe's error, auth and save-state middlewares.
    app.middlewares.append(faithful_routes)


# --------------------------------------------------------------------------
# Idempotent requests (the Idempotency-Key header)
#
# Stock localstripe ignores the header, so a retried create makes a second
# object. The rules below are those of the API reference,
# https://docs.stripe.com/api/idempotent_requests (API v1), and of
# https://docs.stripe.com/error-low-level#idempotency, quoted where applied.
# --------------------------------------------------------------------------

# "Idempotency keys are up to 255 characters long."
IDEMPOTENCY_KEY_MAX_LENGTH = 255
# "You can remove keys from the system automatically after they're at least
# 24 hours old. We generate a new request if a key is reused after the
# original is pruned." Kept in memory only, never in the state file, and
# bounded: a saved response older than this is pruned, and past
# IDEMPOTENCY_MAX_KEYS saved responses the oldest is dropped even before it
# is 24 hours old (a fake's memory limit, not a Stripe rule).
IDEMPOTENCY_TTL_SECONDS = 24 * 3600
IDEMPOTENCY_MAX_KEYS = 100000

# https://docs.stripe.com/error-codes/idempotency-key-in-use
IDEMPOTENCY_KEY_IN_USE_DOC = \
    'https://docs.stripe.com/error-codes/idempotency-key-in-use'


class SavedResponse:
    """The first response to a key, and what it answered."""

    __slots__ = ('created', 'method', 'path', 'fingerprint', 'status',
                 'body', 'content_type', 'charset')

    def __init__(self, created, method, path, fingerprint, status, body,
                 content_type, charset):
        self.created = created
        self.method = method
        self.path = path
        self.fingerprint = fingerprint
        self.status = status
        self.body = body
        self.content_type = content_type
        self.charset = charset


class IdempotencyCache:
    """Saved responses by (API key, Idempotency-Key), oldest first.

    Entries are only ever added at the end (a replay does not refresh
    one), so the oldest is always first and pruning stops at the first
    entry young enough to keep.
    """

    def __init__(self, ttl=IDEMPOTENCY_TTL_SECONDS,
                 max_entries=IDEMPOTENCY_MAX_KEYS):
        self.ttl = ttl
        self.max_entries = max_entries
        self._saved = collections.OrderedDict()

    def __len__(self):
        return len(self._saved)

    def prune(self, now):
        while self._saved:
            oldest = next(iter(self._saved.values()))
            if (now - oldest.created < self.ttl
                    and len(self._saved) <= self.max_entries):
                break
            self._saved.popitem(last=False)

    def get(self, scope, now):
        self.prune(now)
        return self._saved.get(scope)

    def put(self, scope, saved):
        self._saved.pop(scope, None)
        self._saved[scope] = saved
        self.prune(saved.created)


def _request_api_key(request, params):
    """The API key a request authenticates with: the secret key of the
    Authorization header (Basic, as `-u sk_test_...:` sends it, or Bearer),
    else the publishable `key` a few endpoints accept in the body."""
    scheme, _, credentials = request.headers.get(
        'Authorization', '').partition(' ')
    credentials = credentials.strip()
    if scheme == 'Basic':
        try:
            decoded = base64.b64decode(credentials.encode('ascii'),
                                       validate=True).decode('utf-8')
        except (ValueError, UnicodeError):
            decoded = ''
        return decoded.split(':')[0]
    if scheme == 'Bearer':
        return credentials
    key = params.get('key')
    return key if isinstance(key, str) else ''


async def _request_params(request):
    """Query and body parameters, flattened to `a[b][0]` keys (as in the
    request log), for comparing a retry with the first request."""
    params = _flat_params(request.query)
    # body_exists, not can_read_body: localstripe's authentication has
    # already read the body (aiohttp keeps it for every later reader).
    if request.body_exists:
        if request.content_type == 'application/json':
            try:
                _flatten_json(await request.json(), '', params)
            except ValueError:
                params[''] = (await request.read()).decode('utf-8',
                                                          'replace')
        else:
            params.update(_flat_params(await request.post()))
    return params


def _fingerprint(params):
    return hashlib.sha256(json.dumps(
        params, sort_keys=True, default=str).encode('utf-8')).hexdigest()


def _idempotency_middleware(cache=None, clock=time.time):
    """Honours the Idempotency-Key header of POST requests under /v1/.

    The first response to a key is saved with the request's method, path and
    parameters; a later request with the same key and API key gets that
    response back without reaching localstripe at all (so no object is made
    and no webhook is sent twice), or an `idempotency_error` when it is not
    the same request.
    """
    cache = cache if cache is not None else IdempotencyCache()
    in_flight = set()

    @web.middleware
    async def idempotency(request, handler):
        key = request.headers.get('Idempotency-Key')
        # "All `POST` requests accept idempotency keys. Don't send
        # idempotency keys in `GET` and `DELETE` requests because it has no
        # effect. These requests are idempotent by definition." Only the
        # API (/v1/) is concerned: /_config/ is localstripe's own.
        if (request.method != 'POST' or not key
                or not request.path.startswith('/v1/')):
            return await handler(request)
        # "We save results only after the execution of an endpoint
        # begins": a request no route answers (404/405) is not saved.
        if request.match_info.http_exception is not None:
            return await handler(request)
        if len(key) > IDEMPOTENCY_KEY_MAX_LENGTH:
            # The limit is the reference's; the message is this fake's.
            return _error(400, 'Invalid Idempotency-Key: keys are up to %d '
                          'characters long.' % IDEMPOTENCY_KEY_MAX_LENGTH
                          ).to_response()

        params = await _request_params(request)
        # A key belongs to the API key that used it: two API keys never
        # see each other's saved responses.
        scope = (_request_api_key(request, params), key)
        fingerprint = _fingerprint(params)
        now = clock()
        saved = cache.get(scope, now)
        if saved is not None:
            # "The idempotency layer compares incoming parameters to those
            # of the original request and errors if they're not the same
            # to prevent accidental misuse." The type is `idempotency_error`
            # (https://docs.stripe.com/api/errors: "type: One of
            # api_error, card_error, idempotency_error, or
            # invalid_request_error"), HTTP 400; the messages are those
            # Stripe sends (quoted in stripe/stripe-ruby#503 and #598).
            if (saved.method, saved.path) != (request.method, request.path):
                return _error(400, 'Keys for idempotent requests can only '
                              'be used for the same endpoint they were '
                              "first used for ('%s' vs '%s'). Try using a "
                              "key other than '%s' if you meant to execute "
                              'a different request.'
                              % (request.path, saved.path, key),
                              type='idempotency_error').to_response()
            if saved.fingerprint != fingerprint:
                return _error(400, 'Keys for idempotent requests can only '
                              'be used with the same parameters they were '
                              "first used with. Try using a key other than "
                              "'%s' if you meant to execute a different "
                              'request.' % key,
                              type='idempotency_error').to_response()
            # "Stripe saves the status code and body of the first request
            # made with a given idempotency key [...]. Retries with the same
            # key return the saved response, including `500` errors."
            # Stripe marks a replay with the `Idempotent-Replayed: true`
            # response header (read by its SDKs, e.g. stripe-ruby's
            # StripeError#idempotent_replayed?, stripe/stripe-ruby#905).
            response = web.Response(body=saved.body, status=saved.status,
                                    content_type=saved.content_type,
                                    charset=saved.charset)
            response.headers['Idempotent-Replayed'] = 'true'
            return response
        if scope in in_flight:
            # "If incoming parameters fail validation, or the request
            # conflicts with another request that's executing concurrently,
            # we don't save the idempotent result". Stripe answers the
            # concurrent one with a 409 `idempotency_key_in_use`
            # (https://docs.stripe.com/error-codes/idempotency-key-in-use);
            # the message is this fake's.
            return _error(409, 'There is currently another in-progress '
                          'request using this idempotency key: %s. Please '
                          'try again later.' % key,
                          code='idempotency_key_in_use',
                          doc_url=IDEMPOTENCY_KEY_IN_USE_DOC).to_response()

        in_flight.add(scope)
        objects_before = len(resources.store)
        try:
            try:
                response = await handler(request)
            except resources.UserError as e:
                # localstripe's errors, answered here (not by its outer
                # error middleware) so that they can be saved.
                response = e.to_response()
            except web.HTTPException:
                raise
            except Exception:
                # Saved and replayed like any other result ("including
                # `500` errors"), in Stripe's error shape: `api_error`
                # "covers any other type of problem (e.g., a temporary
                # problem with Stripe's servers)" (api/errors). The message
                # is this fake's.
                logging.exception('%s %s (Idempotency-Key %s)',
                                  request.method, request.path, key)
                response = _error(500, 'An unknown error occurred.',
                                  type='api_error').to_response()
        finally:
            in_flight.discard(scope)

        # "We save results only after the execution of an endpoint begins.
        # If incoming parameters fail validation [...] we don't save the
        # idempotent result because no API endpoint initiates the execution.
        # You can retry these requests." error-low-level: results are
        # cached "regardless" once an API method begins execution, but "most
        # 400s that sent invalid parameters" are not. localstripe validates
        # before it stores anything, and every change it makes stores an
        # object (at least an event): a 400 that stored nothing is taken for
        # a validation failure. (401s never get here: authentication, like
        # Stripe's, runs before this layer.)
        executed = len(resources.store) != objects_before
        if (isinstance(response, web.Response)
                and isinstance(response.body, bytes)
                and (response.status != 400 or executed)):
            cache.put(scope, SavedResponse(
                now, request.method, request.path, fingerprint,
                response.status, response.body, response.content_type,
                response.charset))
        return response

    idempotency.cache = cache
    return idempotency


# --------------------------------------------------------------------------
# Request log (env LOCALSTRIPE_REQUEST_LOG)
# --------------------------------------------------------------------------

def _flat_params(multidict):
    params = {}
    for key in multidict.keys():
        if key in params:
            continue
        values = [str(v) for v in multidict.getall(key)]
        params[key] = values[0] if len(values) == 1 else values
    return params


def _flatten_json(value, prefix, out):
    # A JSON body, in the form-encoding's `a[b][0]` key notation.
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten_json(item, '%s[%s]' % (prefix, key) if prefix else key,
                          out)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _flatten_json(item, '%s[%d]' % (prefix, index), out)
    else:
        out[prefix] = value
    return out


def _request_log_middleware(path):
    """Appends one JSON line per request under /v1/ to `path`:
    ``{"method": ..., "path": ..., "params": {"metadata[k]": "v", ...}}``,
    query and body parameters together, before the request is handled (so
    the line is there by the time its response is).
    """
    @web.middleware
    async def request_log(request, handler):
        if request.path.startswith('/v1/'):
            params = _flat_params(request.query)
            if request.can_read_body:
                if request.content_type == 'application/json':
                    try:
                        _flatten_json(await request.json(), '', params)
                    except ValueError:
                        pass
                else:
                    params.update(_flat_params(await request.post()))
            line = json.dumps({'method': request.method,
                               'path': request.path,
                               'params': params}, sort_keys=True)
            try:
                with open(path, 'a', encoding='utf-8') as f:
                    f.write(line + '\n')
            except OSError as e:
                logging.warning('request log %s: %s', path, e)
        return await handler(request)
    return request_log


# --------------------------------------------------------------------------
# State file
# --------------------------------------------------------------------------

def _state_file():
    return os.environ.get('LOCALSTRIPE_STATE_FILE', '/tmp/localstripe.pickle')


def _try_load_from_disk(self):
    try:
        with open(_state_file(), 'rb') as f:
            old = pickle.load(f)
    except FileNotFoundError:
        return
    self.clear()
    self.update(old)


def _dump_to_disk(self):
    # Write then rename, so a crash mid-write never leaves a torn pickle.
    path = _state_file()
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        # A plain dict: the type index is rebuilt on load, never saved.
        pickle.dump(dict(self), f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# Lists by object type. Stock localstripe lists a type by scanning every
# object it holds (events, charges, invoice lines... of every customer), so
# each list call grows slower with every object made and a few thousand
# customers' billing crawls. The store keeps one dict per object type beside
# itself; listing reads that dict, in the same insertion order the scan saw.
# --------------------------------------------------------------------------

def _object_type(key):
    return key.split(':', 1)[0]


def _type_index(store):
    index = store.__dict__.get('_faithful_by_type')
    if index is None:
        index = {}
        for key, value in dict.items(store):
            index.setdefault(_object_type(key), {})[key] = value
        store.__dict__['_faithful_by_type'] = index
    return index


def _objects_of_type(object_type):
    return _type_index(resources.store).get(object_type, {})


def _indexed_setitem(self, key, value):
    dict.__setitem__(self, key, value)
    _type_index(self).setdefault(_object_type(key), {})[key] = value
    self.dump_to_disk()


def _indexed_delitem(self, key):
    dict.__delitem__(self, key)
    _type_index(self).get(_object_type(key), {}).pop(key, None)
    self.dump_to_disk()


def _indexed_clear(self):
    dict.clear(self)
    self.__dict__.pop('_faithful_by_type', None)


def _indexed_update(self, *args, **kwargs):
    dict.update(self, *args, **kwargs)
    self.__dict__.pop('_faithful_by_type', None)


def _list_all_by_type(cls, url, limit=None, starting_after=None, **kwargs):
    # localstripe's StripeObject._api_list_all, reading the type's own dict.
    if kwargs:
        raise resources.UserError(400, 'Unexpected ' + ', '.join(kwargs))
    li = resources.List(url, limit=limit, starting_after=starting_after)
    li._list = list(_objects_of_type(cls.object).values())
    return li


def patch():
    """Apply every patch to the imported localstripe modules (idempotent)."""
    if getattr(resources, '_faithful_patched', False):
        return
    # StripeObject._export serves every resource (incl. Event and List);
    # Balance is not a StripeObject and has its own _export.
    _wrap_export(resources.StripeObject)
    _wrap_export(resources.Balance)
    resources.Invoice._get_next_invoice = _previews_keep_pending_items(
        resources.Invoice._get_next_invoice)
    resources.Subscription._update = \
        _subscription_update_with_proration_behavior(
            resources.Subscription._update)
    resources.Invoice._api_create = _invoice_create_keeps_metadata(
        resources.Invoice._api_create)
    resources.PaymentIntent._confirm = _invoice_payment_failure_events(
        resources.PaymentIntent._confirm)
    resources.Invoice._api_create = _invoice_create_without_subscription(
        resources.Invoice._api_create)
    resources.Invoice.total = _standalone_total(resources.Invoice.total)
    resources.Invoice.amount_due = _standalone_amount_due(
        resources.Invoice.amount_due)
    resources.Invoice.next_payment_attempt = \
        _standalone_next_payment_attempt(
            resources.Invoice.next_payment_attempt)
    resources.Invoice._on_payment_success = _invoice_paid_event(
        resources.Invoice._on_payment_success)
    resources.InvoiceItem._api_create = _invoice_item_added_to_invoice(
        resources.InvoiceItem._api_create)
    _install_routes(server.app)
    # Right after localstripe's authentication (a 401 is never saved, as at
    # Stripe) and before everything that acts on the request, so that a
    # replay reaches neither localstripe nor its state file.
    middlewares = server.app.middlewares
    middlewares.insert(middlewares.index(server.auth_middleware) + 1,
                       _idempotency_middleware())
    request_log = os.environ.get('LOCALSTRIPE_REQUEST_LOG')
    if request_log:
        # Outermost: every request is logged, whatever answers it.
        server.app.middlewares.insert(0, _request_log_middleware(request_log))
    resources.Store.try_load_from_disk = _try_load_from_disk
    resources.Store.dump_to_disk = _dump_to_disk
    resources.Store.__setitem__ = _indexed_setitem
    resources.Store.__delitem__ = _indexed_delitem
    resources.Store.clear = _indexed_clear
    resources.Store.update = _indexed_update
    resources.StripeObject._api_list_all = classmethod(_list_all_by_type)
    resources._faithful_patched = True


# --------------------------------------------------------------------------
# Server start-up (mirrors localstripe.server.start, plus --host)
# --------------------------------------------------------------------------

def _listen_socket(host, port):
    family = socket.AF_INET6 if ':' in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6 and host == '::':
        # Like stock localstripe: '::' accepts IPv4 clients as well.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((host, port))
    return sock


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='localstripe with Stripe-faithful JSON responses')
    parser.add_argument('--port', type=int, default=8420)
    parser.add_argument('--host', default='127.0.0.1',
                        help="address to listen on (default 127.0.0.1; "
                             "'::' = every interface, like stock "
                             "localstripe)")
    parser.add_argument('--from-scratch', action='store_true',
                        help='ignore the state saved in '
                             'LOCALSTRIPE_STATE_FILE')
    parser.add_argument('--in-memory', action='store_true',
                        help='keep state in memory only; stock localstripe '
                             'pickles its whole store after every write, '
                             'which grows slower with every object made')
    args = parser.parse_args(argv)

    if localstripe.__version__ != SUPPORTED_LOCALSTRIPE:
        logging.warning('localstripe %s found; this launcher is written '
                        'for %s', localstripe.__version__,
                        SUPPORTED_LOCALSTRIPE)

    patch()
    if args.in_memory:
        resources.Store.dump_to_disk = lambda self: None
    elif not args.from_scratch:
        resources.store.try_load_from_disk()

    logger = logging.getLogger('aiohttp.access')
    logger.setLevel(logging.DEBUG)
    logger.addHandler(logging.StreamHandler())

    sock = _listen_socket(args.host, args.port)
    web.run_app(server.app, sock=sock, access_log=logger)


if __name__ == '__main__':
    main()
