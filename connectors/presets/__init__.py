"""Ready-made connector types for the CRMs and shops support teams use, built on ``rest``.

Each needs only its credentials (and a shop, instance or subdomain where the API has one)
and accepts ``api_base`` to point it elsewhere: hubspot, salesforce, intercom, shopify,
zendesk, pipedrive. Their field lists are in the README ("Connect your CRM").
"""
