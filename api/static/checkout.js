// FollowPay hosted checkout: pays an invoice from the visitor's wallet (EIP-1193 provider).
// No cryptography here: the server hands over the call data (approve, then the router's pay
// with the merchant's signed intent); the wallet signs and sends. Exposed as
// FollowPayCheckout.payInvoice(provider, invoice, say) so it runs outside a browser too.
"use strict";
(function (root) {
  const word = (address) => address.toLowerCase().replace(/^0x/, "").padStart(64, "0");

  async function receipt(provider, hash, say, what) {
    for (let i = 0; i < 600; i++) {  // a bounded wait: 10 minutes at one look a second
      const found = await provider.request({ method: "eth_getTransactionReceipt", params: [hash] });
      if (found) {
        if (BigInt(found.status) !== 1n) throw new Error(what + " reverted: " + hash);
        return found;
      }
      say(what + " sent (" + hash + "), waiting to be mined…");
      await new Promise((done) => setTimeout(done, 1000));
    }
    throw new Error(what + " was not mined in time: " + hash);
  }

  async function payInvoice(provider, invoice, say) {
    if (!provider) throw new Error("No Ethereum wallet found in this browser.");
    const [from] = await provider.request({ method: "eth_requestAccounts", params: [] });
    if (!from) throw new Error("The wallet shared no account.");
    if (invoice.payer && invoice.payer.toLowerCase() !== from.toLowerCase()) {
      throw new Error("This invoice can only be paid from " + invoice.payer + ".");
    }
    const chainId = await provider.request({ method: "eth_chainId", params: [] });
    if (BigInt(chainId) !== BigInt(invoice.chain_id)) {
      say("Switching the wallet to chain " + BigInt(invoice.chain_id) + "…");
      await provider.request({
        method: "wallet_switchEthereumChain",
        params: [{ chainId: "0x" + BigInt(invoice.chain_id).toString(16) }],
      });
    }
    const allowance = await provider.request({
      method: "eth_call",
      params: [{ to: invoice.token, data: "0xdd62ed3e" + word(from) + word(invoice.router) }, "latest"],
    });
    if (BigInt(allowance === "0x" ? 0 : allowance) < BigInt(invoice.amount)) {
      say("Step 1 of 2: approve the payment in your wallet.");
      const approve = await provider.request({
        method: "eth_sendTransaction",
        params: [{ from, to: invoice.token, data: invoice.approve_data }],
      });
      await receipt(provider, approve, say, "Approval");
    }
    say("Confirm the payment in your wallet.");
    const pay = await provider.request({
      method: "eth_sendTransaction",
      params: [{ from, to: invoice.router, data: invoice.pay_data }],
    });
    await receipt(provider, pay, say, "Payment");
    say("Paid: " + pay + ". The invoice settles after " + invoice.confirmations + " confirmation(s).");
    return pay;
  }

  root.FollowPayCheckout = { payInvoice };

  if (typeof document !== "undefined") {
    document.addEventListener("DOMContentLoaded", () => {
      const button = document.getElementById("pay");
      const status = document.getElementById("status");
      const data = document.getElementById("invoice");
      if (!button || !data) return;
      const invoice = JSON.parse(data.textContent);
      const say = (text) => { status.textContent = text; };
      button.addEventListener("click", async () => {
        button.disabled = true;
        try {
          await payInvoice(root.ethereum, invoice, say);
        } catch (error) {
          say(error && error.message ? error.message : String(error));
          button.disabled = false;
        }
      });
    });
  }
})(typeof window !== "undefined" ? window : globalThis);
