"""Privacy for federated studies: secure aggregation, differential privacy and accounting.

* :mod:`federation.privacy.settings`: a study's privacy settings, parsed and checked;
* :mod:`federation.privacy.secagg`: secure aggregation (Bonawitz et al., CCS 2017);
* :mod:`federation.privacy.dp`: clipping and Gaussian noise (DP-FedAvg, McMahan et al.,
  ICLR 2018);
* :mod:`federation.privacy.accounting`: epsilon from dp-accounting's RDP accountant.
"""
