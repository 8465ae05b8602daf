"""A Stripe stand-in for the sandbox: never part of the installed package.

It answers the few calls wagtail-paid-delivery makes through stripe-python (create and retrieve a
Checkout Session, retrieve a Price), shows a hosted-checkout-like page with Pay and Cancel, and
on Pay delivers a signed ``checkout.session.completed`` event to the sandbox's webhook, so the
whole buy → webhook → fulfillment → download path runs offline. No money moves.
"""
